#!/usr/bin/env bash
# Issue 39, item 3: the OPT-125M rows of SparseGPT's Table 1 (Frantar & Alistarh 2023) and Wanda's (Sun et al. 2023),
# ready to run on a machine that has the checkpoint: WikiText-2 test perplexity, 2,048-token windows, 128 x 2,048
# calibration tokens, no recovery (trainer.max_steps=0). Not run by prunelab's sessions (no network, no copy of
# facebook/opt-125m at hand); the published figures are in README.md beside the table this writes.
#   experiments/oneshot_opt/run.sh MODEL_DIR TEXT_DIR [RUNS_DIR]
# MODEL_DIR: facebook/opt-125m (`hf download facebook/opt-125m --local-dir models/opt-125m`), or the hub id when its
#   files are in the Hugging Face cache.
# TEXT_DIR: test.txt = WikiText-2's test text as the papers join it (experiments/wikitext2/build.py: SHA-256 checked);
#   train.txt = calibration text, one document per blank-line-separated block (the papers: C4's first training shard,
#   en/c4-train.00000-of-01024.json.gz, 128 random 2,048-token segments); valid.txt = any held-out text (only scored).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
TEXT=$2
RUNS=${3:-outputs/oneshot_opt}
SEQ=${SEQ:-2048}     # the papers; SEQ=32 CAL=4 on a tiny model checks the script itself
CAL=${CAL:-128}
mkdir -p "$RUNS"
# the test text tokenized whole (tokenizer(text): OPT's </s> first, as the papers' loaders do), non-overlapping
# windows of 2,048 tokens, the trailing partial one dropped; calibration: 128 windows of train.txt, seed 0
COMMON=(task=language_modeling data=lm_text data.dir="$TEXT" data.documents=joined data.seq_len=$SEQ model=hf
    model.path="$MODEL" logger=none trainer.max_steps=0)
ONESHOT=(pruner=oneshot pruner.calibration.n=$CAL pruner.calibration.seed=0 sparsity=0.5)
run() {  # name, overrides...: skipped when its results.json says completed
    local name=$1; shift
    if grep -qs '"status": "completed"' "$RUNS/$name/results.json"; then return; fi
    python train.py "${COMMON[@]}" "$@" hydra.run.dir="$RUNS/$name"
}
run dense pruner=none
run magnitude_50 "${ONESHOT[@]}" pruner.method=magnitude pruner.calibration.n=1  # |W| alone: no calibration
run sparsegpt_50 "${ONESHOT[@]}" pruner.method=sparsegpt
run wanda_50 "${ONESHOT[@]}" pruner.method=wanda
run sparsegpt_2of4 "${ONESHOT[@]}" pruner.method=sparsegpt pruner.pattern=2:4
run wanda_2of4 "${ONESHOT[@]}" pruner.method=wanda pruner.pattern=2:4
python - "$RUNS" <<'PY'
import json, sys
from pathlib import Path
PAPERS = {"dense": 27.66, "magnitude_50": 193.0, "sparsegpt_50": 36.85, "wanda_50": 38.96, "sparsegpt_2of4": 60.7,
          "wanda_2of4": 81.6}
print("| run | prunelab test ppl | published |\n|---|---|---|")
for name, want in PAPERS.items():
    res = json.loads((Path(sys.argv[1]) / name / "results.json").read_text())
    print(f"| {name} | {res['levels'][-1]['metrics']['test/ppl']:.2f} | {want} |")
PY
