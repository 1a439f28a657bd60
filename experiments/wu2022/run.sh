#!/usr/bin/env bash
# AttendOut (Wu, Zhao & Zhang) at CPU scale: a 6-layer classifier trained with AttendOut and without it
# (experiment=wu2022), then the comparison of experiments/wu2022/report.py.
#
#   experiments/wu2022/run.sh [OUT]
#
# The paper's scale (a pretrained BERT fine-tuned on GLUE, a GPU): experiment=wu2022_paper in the same commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/wu2022/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
EXP=${EXP:-experiment=wu2022}
start=$(date +%s)
$PY train.py $EXP logger=csv pruner=attendout hydra.run.dir="$OUT/attendout"
$PY train.py $EXP logger=csv pruner=none hydra.run.dir="$OUT/baseline"
$PY -m experiments.wu2022.report "$OUT/attendout" "$OUT/baseline" experiments/wu2022/results
echo "wu2022: $(( $(date +%s) - start )) s; tables in experiments/wu2022/results/tables.md"
