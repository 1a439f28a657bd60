#!/usr/bin/env bash
# Issue 24, defect 13: each recipe of README's "Recipes" table against the defaults, on real public corpora, with
# the budgets a CPU user gives them (results/arms.json: the arms and their overrides). This 2-core machine runs two
# arms side by side, each pinned to its own core with one thread (OMP_NUM_THREADS=1, taskset): arms compared with
# each other always had the same machine. Each run's results.json and test.hyp.txt are copied to results/, then
# report.py writes results/tables.md.
#   experiments/real_corpus_recipes/run.sh MULTI30K_DIR SST2_DIR [RUNS_DIR]
# MULTI30K_DIR: {train,valid,test}.{en,de}.gz from github.com/multi30k/dataset data/task1/raw (val -> valid,
# test_2016_flickr -> test). SST2_DIR: GLUE SST-2 as train.tsv, dev.tsv, and the labelled test set as test.tsv.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=$1
S=$2
RUNS=${3:-outputs/real_corpus_recipes}
HERE=experiments/real_corpus_recipes
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
dir_of() { case $1 in nmt_*) echo "$M" ;; *) echo "$S" ;; esac; }
arm() {  # arm CORE NAME: train one arm of arms.json on one core, keep its results
    local overrides
    overrides=$(.venv/bin/python -c "import json,sys; a={x['name']: x for x in json.load(open('$HERE/results/arms.json'))}['$2']; print(' '.join(a['overrides']))")
    # shellcheck disable=SC2086
    taskset -c "$1" .venv/bin/python train.py $overrides data.dir="$(dir_of "$2")" logger=csv hydra.run.dir="$RUNS/$2"
    cp "$RUNS/$2/results.json" "$HERE/results/$2.results.json"
    cp "$RUNS/$2/test.hyp.txt" "$HERE/results/$2.test.hyp.txt"
}
# one run per SentencePiece model first, so that the side-by-side arms find it cached
.venv/bin/python train.py data=parallel_text data.dir="$M" trainer.max_steps=1 logger=none hydra.run.dir="$RUNS/prep_nmt"
.venv/bin/python train.py data=tsv_classification model=classifier_tiny data.dir="$S" trainer.max_steps=1 logger=none \
    hydra.run.dir="$RUNS/prep_cls"
(arm 0 nmt_defaults && arm 0 nmt_defaults_do01_greedy) &
(arm 1 nmt_small_corpus_nmt_cpu && arm 1 cls_defaults && arm 1 cls_small_corpus_classification) &
wait
.venv/bin/python "$HERE/report.py" "$HERE/results"
