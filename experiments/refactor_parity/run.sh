#!/usr/bin/env bash
# A fixed set of runs whose results.json metrics must not change under a refactor (issue 37): the default pipeline,
# an iterative pruner over two levels, one-shot on a classifier, structured removal with distillation, a language
# model. Usage: experiments/refactor_parity/run.sh OUT_DIR, then
#   python -m experiments.refactor_parity.compare OUT_BEFORE OUT_AFTER
# One thread each, one run at a time, so that a reduction's order is the same whatever the machine is doing.
set -euo pipefail
out=$(realpath -m "${1:?usage: run.sh OUT_DIR}")
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_SILENT=true
run() {  # run NAME OVERRIDES...: a run folder per name; a finished one is kept (train.py skips finished runs)
    local name=$1; shift
    echo "== $name: $*"
    "$PY" train.py logger=csv trainer.enable_progress_bar=false "$@" "hydra.run.dir=$out/$name" > "$out/$name.log" 2>&1 \
        || { echo "$name failed, see $out/$name.log"; tail -5 "$out/$name.log"; exit 1; }
}
mkdir -p "$out"
run default trainer.max_steps=150 trainer.val_check_interval=75
run slt_mp experiment=smoke pruner=slt_mp sparsity=0.7 pruner.slt_levels=[0.5] trainer.max_steps=30
CLS=(model=classifier_tiny data=synthetic_classification experiment=smoke trainer.max_steps=40)
run cls_dense "${CLS[@]}"
run cls_oneshot "${CLS[@]}" pruner=oneshot pruner.method=sparsegpt sparsity=0.5 trainer.max_steps=0 "ckpt=$out/cls_dense"
run structured_kd trainer.val_check_interval=10 pruner=structured sparsity=0.3 pruner.finetune_steps=20 pruner.importance_batches=2 \
    "ckpt=$out/default" "task.distill.teacher=$out/default" task.distill.hidden_weight=0.5
run lm data=synthetic_lm model=decoder_tiny trainer.max_steps=40 trainer.val_check_interval=20 pruner=mp sparsity=0.5
echo "done: $out"
