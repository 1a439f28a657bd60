# make train | make test | make acceptance | make sweep | make bench | make bench-quick | make bench-compare | make lint
# Every target sets up .venv first; torch is pinned to the CPU wheel so pip never pulls CUDA packages.
PY      := .venv/bin/python
TORCH   := torch==2.13.0
STAMP   := .venv/.installed
TEST_STAMP  := .venv/.test-installed
BENCH_STAMP := .venv/.bench-installed
ARGS    ?=

.PHONY: setup train sweep test acceptance bench bench-quick bench-compare lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]' $(TORCH)
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py $(ARGS)

sweep: $(STAMP)
	$(PY) train.py -m pruner=none,mp sparsity=0.5,0.8,0.9 $(ARGS)

# The tests also need the hf extra: the import parity tests build reference models with transformers and read
# them with safetensors. `make train` stays without it (a lighter set-up); the torch pin is on every pip line,
# so that resolving the extras can never replace the CPU wheel with a CUDA one.
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,hf,lm]' $(TORCH)
	touch $(TEST_STAMP)

# --durations=20: the slowest tests, printed at every run (CI's log too), so that a test growing past its share shows
test: $(TEST_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -m "not acceptance" --durations=20 $(ARGS)

# The exact `python train.py` default run and its claim (test BLEU >= 80): about 5 minutes of one core on its own,
# too long a pole for `make test`'s 15 minutes; run before a release and at every stop.
acceptance: $(TEST_STAMP)
	$(PY) -m pytest -m acceptance $(ARGS)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,hf,lm,bench]' $(TORCH)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/run.py $(ARGS)

bench-quick: $(BENCH_STAMP)
	$(PY) bench/run.py --quick $(ARGS)

# bench/gpu_check.py -> bench/RESULTS_gpu.md (issue 40's GPU checks, <= 8 minutes of one H100). Where python3's torch
# sees a CUDA GPU (the lent GPU machines' image: torch with CUDA, lightning), that python runs it as it is, nothing
# pip-installed over its torch, prunelab from src/ and hydra-core/omegaconf/antlr4 from .gpu-site/ (which that image
# lacks and cannot download: `make gpu-site` here first, and carry .gpu-site there). Elsewhere .venv's python (the CPU
# wheel), where only `make gpu-check ARGS=--dry-run` (every step on the CPU, tiny) runs; `make test` runs it too.
GPU_SITE := .gpu-site
gpu-check:
	@if python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
		echo "gpu-check: $$(command -v python3), torch with CUDA"; \
		PYTHONPATH="$(CURDIR)/src$${PYTHONPATH:+:$$PYTHONPATH}" python3 bench/gpu_check.py $(ARGS); \
	else \
		$(MAKE) --no-print-directory $(TEST_STAMP) && $(PY) bench/gpu_check.py $(ARGS); \
	fi

# the pure-Python packages the GPU machines' image lacks, copied out of .venv (no download): hydra, omegaconf, antlr4
gpu-site: $(TEST_STAMP)
	rm -rf $(GPU_SITE)
	$(PY) -c "import shutil, sys, pathlib, hydra, omegaconf, antlr4; \
	[shutil.copytree(pathlib.Path(m.__file__).parent, pathlib.Path(sys.argv[1], m.__name__), \
	 ignore=shutil.ignore_patterns('__pycache__')) for m in (hydra, omegaconf, antlr4)]" $(GPU_SITE)
	du -sh $(GPU_SITE)

# the working tree's quick training and decoding ratios against commit BASE's, alternating, in one process tree:
# head / base per row, rows with a goal that got more than 5% worse flagged "slower"
BASE ?= HEAD
bench-compare: $(BENCH_STAMP)
	$(PY) bench/compare.py $(BASE) $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench experiments train.py
	$(PY) -m ruff format --check src tests bench experiments train.py
	.venv/bin/lint-imports --no-cache  # the floors (.importlinter)

format: $(STAMP)
	$(PY) -m ruff format src tests bench experiments train.py
	$(PY) -m ruff check --fix src tests bench experiments train.py

clean:
	rm -rf .venv outputs .pytest_cache
