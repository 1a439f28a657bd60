#!/usr/bin/env bash
# Issue 27: prune + distil against training from scratch, by width and by depth, on (a) a translation model prunelab
# trains on a real corpus (Multi30k en-de) and (b) MiniLM-L6 fine-tuned on SST-2.
#   experiments/structured/run.sh MULTI30K_DIR SST2_DIR MINILM_DIR [RUNS_DIR]
#   (BASES_ONLY=1: the start models only; LANES=nmt or LANES=cls: one lane only)
# (the data folders as experiments/oneshot/run.sh takes them). Two lanes, one core and one thread each (taskset):
#   core 0: the NMT start model (experiments/oneshot's recipe by steps: 1,221, then a 1,000-step linear cool-down),
#           its grid;
#   core 1: MiniLM fine-tuned on SST-2 (1,200 steps of experiment=finetune), its grid; then both speed measurements.
# The grid, per model: width (heads + neurons, Minitron's activation scores, the same fraction of every layer) and
# depth (whole layers by block influence), removing 1/3 and 1/2 of the layer stacks' parameters
# (pruner.budget=stack_params; results.json gives the fraction of all parameters too), each recovered
#   distil    RECOVERY steps with task.distill.teacher = the start model (KL at T=2, alpha 0.5);
#   finetune  the same steps without the teacher;
#   scratch   the cut architecture freshly initialised, trained with the task's own from-scratch recipe for as many
#             steps as make its compute equal to the distil run's (steps x 3 x student FLOPs/token + the teacher's
#             forward: scratch steps = RECOVERY x (3 S + T) / (3 S), S and T from the distil run's results.json).
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
NMT=(data=parallel_text data.dir="$M")
CLS=(experiment=finetune model=hf_encoder model.path="$MINILM" data=tsv_classification data.dir="$S")
RECOVER_NMT=(task.lr=5e-4 task.schedule=linear task.warmup_fraction=0.1 trainer.val_check_interval=100)
RECOVER_CLS=(trainer.val_check_interval=100)
STEPS_NMT=${STEPS_NMT:-300}
STEPS_CLS=${STEPS_CLS:-300}
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

grid() {  # grid KIND CORE BASE STEPS DATA... -- RECOVERY_OVERRIDES...
    local kind=$1 core=$2 base=$3 steps=$4 structure fraction name args
    shift 4
    local data=() recover=()
    while [ "$1" != "--" ]; do data+=("$1"); shift; done
    shift
    recover=("$@")
    for structure in width depth; do
        for fraction in 0.33 0.5; do
            name="${kind}_${structure}_${fraction}"
            args=(pruner=structured ckpt="$RUNS/$base" "${data[@]}" sparsity="$fraction" pruner.budget=stack_params
                pruner.structure="$structure" pruner.finetune_steps="$steps")
            if [ "$structure" = depth ]; then args+=(pruner.criterion=block_influence); fi
            run "${name}_distil" "$core" "${args[@]}" "${recover[@]}" task.distill.teacher="$RUNS/$base"
            run "${name}_finetune" "$core" "${args[@]}" "${recover[@]}"
            args=("${args[@]/pruner.finetune_steps=$steps/pruner.finetune_steps=$(scratch_steps "${name}_distil" "$steps")}")
            run "${name}_scratch" "$core" "${args[@]}" pruner.recovery=scratch
        done
    done
}

[[ $LANES == *" nmt "* ]] && (
    # experiments/oneshot's start model by steps, not minutes (1,221 steps in its 30 min, then the cool-down from the
    # lr where that schedule ended, 3e-3 * sqrt(200 / 1221) = 1.2e-3, decayed to 0): the same model on a busy machine
    run nmt_base_raw 0 "${NMT[@]}" trainer.max_steps=1221 model.dropout=0.1 task.val_beam_size=1
    run nmt_base 0 "${NMT[@]}" ckpt="$RUNS/nmt_base_raw" trainer.max_steps=1000 model.dropout=0.1 \
        task.val_beam_size=1 task.lr=1.2e-3 task.schedule=linear task.warmup_steps=1
    [ "${BASES_ONLY:-0}" = 1 ] || grid nmt 0 nmt_base "$STEPS_NMT" "${NMT[@]}" model.dropout=0.1 task.val_beam_size=1 \
        -- "${RECOVER_NMT[@]}"
) &
[[ $LANES == *" cls "* ]] && (
    run cls_base 1 "${CLS[@]}" trainer.max_steps=1200 trainer.val_check_interval=200
    [ "${BASES_ONLY:-0}" = 1 ] || grid cls 1 cls_base "$STEPS_CLS" "${CLS[@]}" -- "${RECOVER_CLS[@]}"
) &
wait
[ "${BASES_ONLY:-0}" = 1 ] && exit 0
[[ $LANES == " nmt cls " ]] || exit 0  # one lane: the speed and the report wait for both
taskset -c 0 .venv/bin/python -m experiments.structured.speed "$RUNS/nmt_base" "$RUNS"/nmt_*_* \
    --out "$HERE/results/speed.json" &
taskset -c 1 .venv/bin/python -m experiments.structured.speed "$RUNS/cls_base" "$RUNS"/cls_*_* \
    --out "$HERE/results/speed_cls.json" &
wait
.venv/bin/python -m experiments.structured.report "$HERE/results"
