#!/usr/bin/env bash
# Issue 27: prune + distil against training from scratch, by width and by depth, on (a) a translation model prunelab
# trains on a real corpus (Multi30k en-de) and (b) MiniLM-L6 fine-tuned on SST-2.
#   experiments/structured/run.sh MULTI30K_DIR SST2_DIR MINILM_DIR [RUNS_DIR]
#   (BASES_ONLY=1: the start models only; LANES=nmt or LANES=cls: one lane only)
# (the data folders as experiments/oneshot/run.sh takes them). Two lanes, one core and one thread each (taskset):
#   core 0: the NMT start model (transformer_tiny, BASE_NMT steps of 1,024-token batches, lr 3e-3 with a 10% warm-up
#           and a linear decay to 0), its grid, then whatever of the other grid is not taken;
#   core 1: MiniLM fine-tuned on SST-2 (BASE_CLS steps of experiment=finetune), its grid, then the same;
#   then both speeds, one on each core. A lane takes one cut (its distil, finetune and scratch runs) at a time, with a
#   lock folder, so that the lane that finishes first helps the other. The NMT grid ends with its 1/3 width cut
#   recovered again for LONG_NMT steps (runs named ..._distil_1000).
# The whole script is sized to run in under 2 hours on this 2-core machine; every figure in results/ comes from it.
# The grid, per model: width (heads + neurons, Minitron's activation scores, the same fraction of every layer) and
# depth (whole layers: block influence for the pre-norm NMT model, Wang & Tu's contribution for post-norm BERT),
# removing 1/3 and then 1/2 of the layer stacks' parameters (pruner.budget=stack_params; results.json gives the
# fraction of all parameters too), each recovered
#   distil    RECOVERY steps with task.distill.teacher = the start model (KL at T=2, alpha 0.5);
#   finetune  the same steps without the teacher;
#   scratch   the cut architecture freshly initialised, trained with its start model's own recipe (lr and schedule)
#             for as many steps as make its compute equal to the distil run's (steps x 3 x student FLOPs/token +
#             the teacher's forward: scratch steps = RECOVERY x (3 S + T) / (3 S), S and T from the distil run).
# Runs resume: a run whose results.json says completed is not run again. report.py writes results/tables.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=$1
S=$2
MINILM=$3
RUNS=${4:-outputs/structured}
HERE=experiments/structured
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$HERE/results" "$RUNS"
rm -rf "$RUNS"/*.lock  # an earlier invocation's (one run.sh at a time)
NMT=(data=parallel_text data.dir="$M" data.max_tokens=1024 model.dropout=0.1 task.val_beam_size=1)
CLS=(experiment=finetune model=hf_encoder model.path="$MINILM" data=tsv_classification data.dir="$S")
RECOVER_NMT=(task.lr=5e-4 task.schedule=linear task.warmup_fraction=0.1 trainer.val_check_interval=100)
RECOVER_CLS=(trainer.val_check_interval=100)
BASE_RECIPE_NMT=(task.schedule=linear task.warmup_fraction=0.1)  # the task's lr (3e-3), warm-up, decay to 0
SCRATCH_NMT=("${BASE_RECIPE_NMT[@]}" trainer.val_check_interval=100)  # the start model's own recipe
# fine-tuning's 2e-5 is no from-scratch lr: BERT-small pre-training's 3e-4, with the same 10% warm-up and decay
SCRATCH_CLS=(task.lr=3e-4 trainer.val_check_interval=100)
BASE_NMT=${BASE_NMT:-4000}
BASE_CLS=${BASE_CLS:-1200}
STEPS_NMT=${STEPS_NMT:-300}
STEPS_CLS=${STEPS_CLS:-300}
LONG_NMT=${LONG_NMT:-1000}  # the NMT 1/3 width cut recovered again for longer: how its gap to dense closes
LANES=" ${LANES:-nmt cls} "

done_run() { grep -qs '"status": "completed"' "$RUNS/$1/results.json"; }

run() {  # run NAME CORE OVERRIDES...
    local name=$1 core=$2
    shift 2
    if ! done_run "$name"; then
        taskset -c "$core" .venv/bin/python train.py "$@" logger=csv hydra.run.dir="$RUNS/$name" \
            >"$RUNS/$name.log" 2>&1 || { echo "$name failed: see $RUNS/$name.log" >&2; return 1; }
    fi
    cp "$RUNS/$name/results.json" "$HERE/results/$name.results.json"
}

scratch_steps() {  # scratch_steps DISTIL_RUN STEPS: equal compute (see above)
    .venv/bin/python -c "
import json, sys
s = json.load(open('$RUNS/$1/results.json'))['structured']['flops_per_token']
print(round($2 * (3 * s['after'] + s['before']) / (3 * s['after'])))"
}

depth_criterion() {  # depth_criterion KIND: block influence reads a pre-norm residual stream (the NMT model);
    # BERT-family models are post-norm, so their layers go by Wang & Tu's contribution (the score's drop per layer)
    if [ "$1" = nmt ]; then echo block_influence; else echo contribution; fi
}

grid() {  # grid KIND CORE BASE "CUT ..." DATA... -- RECOVERY_OVERRIDES... -- SCRATCH_OVERRIDES...
    # CUT: STRUCTURE:FRACTION:STEPS[:SUFFIX]; its runs are KIND_STRUCTURE_FRACTION_{distil,finetune,scratch}SUFFIX
    local kind=$1 core=$2 base=$3 cuts=$4 structure fraction steps suffix name cut
    shift 4
    local data=() recover=() scratch=() args=()
    while [ "$1" != "--" ]; do data+=("$1"); shift; done
    shift
    while [ "$1" != "--" ]; do recover+=("$1"); shift; done
    shift
    scratch=("$@")
    for cut in $cuts; do
        IFS=: read -r structure fraction steps suffix <<<"$cut"
        name="${kind}_${structure}_${fraction}"
        mkdir "$RUNS/$name$suffix.lock" 2>/dev/null || continue  # the other lane has it
        args=(pruner=structured ckpt="$RUNS/$base" "${data[@]}" sparsity="$fraction" pruner.budget=stack_params
            pruner.structure="$structure")
        if [ "$structure" = depth ]; then args+=(pruner.criterion="$(depth_criterion "$kind")"); fi
        run "${name}_distil$suffix" "$core" "${args[@]}" pruner.finetune_steps="$steps" "${recover[@]}" \
            task.distill.teacher="$RUNS/$base"
        run "${name}_finetune$suffix" "$core" "${args[@]}" pruner.finetune_steps="$steps" "${recover[@]}"
        run "${name}_scratch$suffix" "$core" "${args[@]}" pruner.recovery=scratch "${scratch[@]}" \
            pruner.finetune_steps="$(scratch_steps "${name}_distil$suffix" "$steps")"
    done
}

cuts() {  # cuts STEPS: 1/3 and then 1/2 of the stacks' parameters, by width and by depth
    echo "width:0.33:$1 depth:0.33:$1 width:0.5:$1 depth:0.5:$1"
}
nmt_grid() {  # nmt_grid CORE; then the 1/3 width cut again with LONG_NMT recovery steps (..._distil_1000)
    grid nmt "$1" nmt_base "$(cuts "$STEPS_NMT") width:0.33:$LONG_NMT:_$LONG_NMT" \
        "${NMT[@]}" -- "${RECOVER_NMT[@]}" -- "${SCRATCH_NMT[@]}"
}
cls_grid() {  # cls_grid CORE
    grid cls "$1" cls_base "$(cuts "$STEPS_CLS")" "${CLS[@]}" -- "${RECOVER_CLS[@]}" -- "${SCRATCH_CLS[@]}"
}
[[ $LANES == *" nmt "* ]] && (
    run nmt_base 0 "${NMT[@]}" trainer.max_steps="$BASE_NMT" "${BASE_RECIPE_NMT[@]}"
    [ "${BASES_ONLY:-0}" = 1 ] && exit 0
    nmt_grid 0
    if [[ $LANES == *" cls "* ]] && done_run cls_base; then cls_grid 0; fi
) &
[[ $LANES == *" cls "* ]] && (
    run cls_base 1 "${CLS[@]}" trainer.max_steps="$BASE_CLS" trainer.val_check_interval=200
    [ "${BASES_ONLY:-0}" = 1 ] && exit 0
    cls_grid 1
    if [[ $LANES == *" nmt "* ]] && done_run nmt_base; then nmt_grid 1; fi
) &
wait
[ "${BASES_ONLY:-0}" = 1 ] && exit 0
[[ $LANES == " nmt cls " ]] || exit 0  # one lane: the speed and the report wait for both
pruned_runs() {  # pruned_runs KIND: the grid's completed run folders (not the lock folders)
    local d
    for d in "$RUNS/$1"_*_*; do [ -f "$d/results.json" ] && echo "$d"; done
}
# shellcheck disable=SC2046  # one folder per word
taskset -c 0 .venv/bin/python -m experiments.structured.speed "$RUNS/nmt_base" $(pruned_runs nmt) \
    --out "$HERE/results/speed_nmt.json" &
# shellcheck disable=SC2046
taskset -c 1 .venv/bin/python -m experiments.structured.speed "$RUNS/cls_base" $(pruned_runs cls) \
    --out "$HERE/results/speed_cls.json" &
wait
.venv/bin/python -m experiments.structured.report "$HERE/results"
