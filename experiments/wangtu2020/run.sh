#!/usr/bin/env bash
# Wang & Tu (2020) at CPU scale, on the same converged 6+6-layer model as experiments/michel2019 (experiment=deep_nmt):
# contribution and criticality of the 36 components, group ablation, prune-and-retrain against a shallow model of the
# same size (Table 3), and rewind against continued training (Table 4), then the tables of README.md.
#
#   experiments/wangtu2020/run.sh [OUT]      # trains the dense model, or reuses one: DENSE=path/to/run
#
# The paper's scale (transformer_base on WMT data, a GPU): experiment=wangtu2020_paper in the same commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/wangtu2020/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
DENSE=${DENSE:-$OUT/dense}
EXP=${EXP:-experiment=deep_nmt}
FT_LR=${FT_LR:-3e-4}  # Table 4's fine-tuning lr: a tenth of the training peak (the peak itself shakes the trained model)
start=$(date +%s)
if [ ! -f "$DENSE/results.json" ]; then
  $PY train.py $EXP logger=csv hydra.run.dir="$DENSE"
fi
$PY -m prunelab.cli.main components "$DENSE"
# 20% of the components (7 of 36, the paper's Table 3-4 setting), chosen by contribution on the validation set
# each study's tables are written as soon as it finishes (rewind first: two 1,000-step fine-tunings; retrain trains
# two models to convergence)
report() { $PY -m experiments.wangtu2020.report "$DENSE" "$OUT/retrain" "$OUT/rewind" experiments/wangtu2020/results; }
report
$PY train.py $EXP logger=csv ckpt="$DENSE" pruner=components sparsity=0.2 pruner.mode=rewind task.lr="$FT_LR" \
  hydra.run.dir="$OUT/rewind"
report
# two models trained to convergence from θ_0: twice the dense model's budget, shared by the two
$PY train.py $EXP logger=csv ckpt="$DENSE" pruner=components sparsity=0.2 pruner.mode=retrain trainer.max_time=4800 \
  hydra.run.dir="$OUT/retrain"
report
echo "wangtu2020: $(( $(date +%s) - start )) s; tables in experiments/wangtu2020/results/tables.md"
