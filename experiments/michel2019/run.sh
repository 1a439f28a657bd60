#!/usr/bin/env bash
# Michel, Levy & Neubig (2019) at CPU scale: a converged 6+6-layer, 8-head Transformer (experiment=deep_nmt) on the
# embedded task, then every head study of `prunelab heads` and the tables of README.md.
#
#   experiments/michel2019/run.sh [OUT]          # trains the dense model (or reuse one: DENSE=path/to/run)
#
# The paper's scale (transformer_base on WMT data, a GPU): experiment=michel2019_paper, then the same two commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-outputs/michel2019/$(date +%Y-%m-%d_%H-%M-%S)}
PY=${PY:-.venv/bin/python}
DENSE=${DENSE:-$OUT/dense}
start=$(date +%s)
if [ ! -f "$DENSE/results.json" ]; then
  $PY train.py experiment=deep_nmt logger=csv hydra.run.dir="$DENSE"
fi
# greedy decoding for every BLEU of the study (the paper's own choice for its ablations is beam search; greedy
# keeps ~400 decodes of the test set affordable); Table 4 at the paper's batch sizes
$PY -m prunelab.cli.main heads "$DENSE" --beam-size 1 --random-orders 3 --speed-batch-sizes 1,4,16,64
$PY -m experiments.michel2019.report "$DENSE" experiments/michel2019/results
echo "michel2019: $(( $(date +%s) - start )) s; tables in experiments/michel2019/results/tables.md"
