#!/usr/bin/env bash
# AttendOut (Wu, Zhao & Zhang) at CPU scale (experiment=wu2022): the paper prunes during task-specific fine-tuning of
# a trained encoder, so a 6-layer classifier is first trained on the task (pruner=none, 2,000 steps: the model both
# start from), then fine-tuned FT more steps with AttendOut, and FT steps without it (the compute-matched baseline);
# then the comparison of experiments/wu2022/report.py. Finished runs are skipped, so a stopped script can be rerun.
#
#   experiments/wu2022/run.sh [OUT]
#
# AttendOut's reward here is pruner.reward=margin with pruner.drop_bonus=0.05: the +/-1 reward alone prunes nothing
# (README.md). The paper's scale (a pretrained BERT fine-tuned on GLUE, a GPU), where the checkpoint itself is the
# start:  PRETRAIN=0 EXP="experiment=wu2022_paper model.path=... data.dir=..." experiments/wu2022/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/wu2022/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
EXP=${EXP:-experiment=wu2022}
PRETRAIN=${PRETRAIN:-1}
FT=${FT:-1000}           # fine-tuning steps of both arms
FT_LR=${FT_LR:-3e-4}     # a tenth of the from-scratch peak: fine-tuning must not shake the trained model
AO="pruner=attendout pruner.reward=margin pruner.drop_bonus=0.05 pruner.g_lr=1e-2 pruner.every=10"
start=$(date +%s)
done_run() { [ -f "$1/results.json" ] && grep -q '"status": "completed"' "$1/results.json"; }
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  done_run "$OUT/$name" || $PY train.py $EXP logger=csv "$@" hydra.run.dir="$OUT/$name"
}
if [ "$PRETRAIN" = 1 ]; then
  run pretrained pruner=none
  FROM=(ckpt="$OUT/pretrained" trainer.max_steps="$FT" task.lr="$FT_LR")
  START=(--start "$OUT/pretrained")
else
  FROM=()
  START=()
fi
run attendout $AO "${FROM[@]}"
run baseline pruner=none "${FROM[@]}"
$PY -m experiments.wu2022.report "$OUT/attendout" "$OUT/baseline" experiments/wu2022/results "${START[@]}"
for name in pretrained attendout baseline; do  # every number of the tables, with the configuration behind it
  [ ! -f "$OUT/$name/results.json" ] || cp "$OUT/$name/results.json" "experiments/wu2022/results/${name}_results.json"
done
echo "wu2022: $(( $(date +%s) - start )) s; tables in experiments/wu2022/results/tables.md"
