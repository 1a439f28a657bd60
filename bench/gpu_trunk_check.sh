#!/usr/bin/env bash
# The trunk's GPU checks, run on a lent GPU machine from the repository root (device tool):
#   hardware=gpu (bf16-mixed, fused Adam, gradient clipping) trains; the default run and MP 90% on the GPU;
#   SIGTERM mid-round saves the step and the run resumes; the DDP preset on the machine's GPU(s).
# Needs torch/lightning/sacrebleu there; hydra-core, omegaconf and antlr4 as wheels in .whl/ (see README).
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=$PWD/src:/tmp/site
fi
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
R=/tmp/gpu-runs; rm -rf $R; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
run() { local name=$1; shift; local t0=$(date +%s)
  python3 train.py logger=csv trainer.enable_progress_bar=false hydra.run.dir=$R/$name "$@" > "$OUT/$name.log" 2>&1
  local rc=$?; echo "$name rc=$rc wall=$(( $(date +%s) - t0 ))s" | tee -a "$OUT/summary.txt"
  [ -f $R/$name/results.json ] && cp $R/$name/results.json "$OUT/$name.json"; return $rc; }
run smoke_gpu experiment=smoke hardware=gpu
run default_gpu hardware=gpu
run mp90_gpu hardware=gpu pruner=mp sparsity=0.9
run ddp_preset experiment=smoke hardware=ddp
# SIGTERM 40 s into a long smoke-sized MP run (timeout itself exits 124), then the same command resumes it
T="experiment=smoke hardware=gpu pruner=mp sparsity=0.5 trainer.max_steps=3000 trainer.val_check_interval=500"
timeout -s TERM 40 python3 train.py logger=csv trainer.enable_progress_bar=false hydra.run.dir=$R/term $T \
  > "$OUT/term_first.log" 2>&1
cp $R/term/results.json "$OUT/term_interrupted.json" 2>/dev/null
run term $T
python3 - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    m, t = r.get("metrics", {}), r.get("train", {})
    print(f"{f.stem}: status={r.get('status')} test/bleu={m.get('test/bleu')} sparsity={r.get('sparsity', {}).get('overall')} "
          f"tokens/s={t.get('tokens_per_s')} fit_s={t.get('fit_time_s')} trainer={r.get('trainer')} interrupted={r.get('interrupted')}")
PY
