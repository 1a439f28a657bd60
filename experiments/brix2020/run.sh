#!/usr/bin/env bash
# Brix et al. (2020), Table 1 at small scale, converged and compute-matched (see README.md).
#
# Every round trains 1,200 steps (the dense default run's length). LT, SLT and CLT go up the paper's level
# schedule to 90% in 11 rounds (13,200 steps); their runs to 50% and 80% are the first rounds of those runs.
# MP and random pruning train once, either for one round (the paper's MP) or for as many steps as SLT took to
# reach the same sparsity (compute-matched: 13,200 steps to 90%, 10,800 to 80%, 7,200 to 50%).
# A finished run (its results.json says "completed") is skipped, so an interrupted script can be rerun.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/brix2020/$(date +%Y-%m-%d)}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
MATCHED=13200     # 11 rounds x 1,200 steps: LT/SLT/CLT to 90%
MATCHED80=10800   # 9 rounds: to 80%
MATCHED50=7200    # 6 rounds: to 50%

run() {  # run NAME OVERRIDES...: one training run into $OUT/NAME, then the table so far
  local name=$1
  shift
  if grep -qs '"status": "completed"' "$OUT/$name/results.json"; then
    echo "skip $name (done)"
  else
    echo "$(date +%T) $name: $*"
    $PY train.py experiment=brix2020 logger=csv "$@" hydra.run.dir="$OUT/$name"
  fi
  $PY -m experiments.brix2020.report "$OUT"
}

run slt pruner=slt sparsity=0.9
run mp_1200 pruner=mp sparsity=0.9
run mp50_1200 pruner=mp sparsity=0.5
run mp80_1200 pruner=mp sparsity=0.8
run mp_matched pruner=mp sparsity=0.9 trainer.max_steps=$MATCHED
run clt pruner=clt sparsity=0.9
run lt pruner=lt sparsity=0.9
run random_matched pruner=random sparsity=0.9 trainer.max_steps=$MATCHED
run clt_random_signs pruner=clt pruner.random_signs=true sparsity=0.9
run slt_mp pruner=slt_mp sparsity=0.9
run mp_slt pruner=mp_slt sparsity=0.9
run mp50_matched pruner=mp sparsity=0.5 trainer.max_steps=$MATCHED50
run mp80_matched pruner=mp sparsity=0.8 trainer.max_steps=$MATCHED80
$PY -m experiments.brix2020.report "$OUT" experiments/brix2020/results
