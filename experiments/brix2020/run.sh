#!/usr/bin/env bash
# Brix et al. (2020), Table 1 at small scale: MP, LT, SLT, CLT, SLT-MP, MP-SLT at 50 / 80 / 90% sparsity.
#
# The full grid is one multirun:
#   python train.py -m experiment=brix2020 pruner=mp,lt,slt,clt,slt_mp,mp_slt sparsity=0.5,0.8,0.9
# To save CPU time this script runs only the jobs whose results are not already contained in another job:
# an LT/SLT/CLT run to 90% passes through exactly the runs to 50% and 80% (same rounds), and so on; the
# summary takes those cells from the equivalent levels and says so (`source` in summary.csv).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/brix2020/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
$PY train.py -m experiment=brix2020 logger=csv pruner=mp,lt,slt,clt,slt_mp,mp_slt sparsity=0.9 hydra.sweep.dir="$OUT/at90"
$PY train.py -m experiment=brix2020 logger=csv pruner=mp sparsity=0.5,0.8 hydra.sweep.dir="$OUT/mp"
$PY train.py -m experiment=brix2020 logger=csv pruner=slt_mp sparsity=0.8 hydra.sweep.dir="$OUT/slt_mp80"
$PY train.py -m experiment=brix2020 logger=csv pruner=mp_slt sparsity=0.5 hydra.sweep.dir="$OUT/mp_slt50"
$PY -m prunelab.cli.main summarize "$OUT"
echo "table: $OUT/summary.md"
