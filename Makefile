# make train | make test | make sweep | make bench | make lint
# Every target sets up .venv first; torch is pinned to the CPU wheel so pip never pulls CUDA packages.
PY      := .venv/bin/python
TORCH   := torch==2.13.0
STAMP   := .venv/.installed
ARGS    ?=

.PHONY: setup train sweep test bench lint format clean

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

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(ARGS)

bench: $(STAMP)
	$(PY) bench/run.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check src tests bench experiments train.py
	$(PY) -m ruff format --check src tests bench experiments train.py

format: $(STAMP)
	$(PY) -m ruff format src tests bench experiments train.py
	$(PY) -m ruff check --fix src tests bench experiments train.py

clean:
	rm -rf .venv outputs .pytest_cache
