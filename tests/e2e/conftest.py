"""Helpers to run `python train.py ...` exactly as a user does, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    dir: Path

    @property
    def results(self) -> dict:
        return json.loads((self.dir / "results.json").read_text())


def run_env(**changes: str | None) -> dict[str, str]:
    """The environment of a `train.py` subprocess; a change to None removes that variable."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    if "PYTEST_XDIST_WORKER" in os.environ:  # tests run side by side: one thread each on the 2 cores
        env["OMP_NUM_THREADS"] = "1"
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def train(
    run_dir: Path,
    *overrides: str,
    multirun: bool = False,
    timeout: int = 600,
    env: dict[str, str | None] | None = None,
) -> Run:
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), *overrides, f"{key}={run_dir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=run_env(**(env or {})))
    return Run(proc.returncode, proc.stdout, proc.stderr, run_dir)


def train_here(run_dir: Path, *overrides: str) -> Run:
    """`python train.py OVERRIDES` in this process, for tests that check what a run computes rather than how the
    command behaves (exit codes on signals, train.log, W&B files, sweeps): the same composition of conf/train.yaml
    with the run folder as Hydra's output dir, and the same `train(cfg, out, choices)` that train.py calls. A
    UserError gives returncode 2 and train.py's `error: ...` line in stderr. It saves the interpreter's start-up
    (importing torch and Lightning: about 8 s a run on this machine)."""
    from omegaconf import open_dict

    from prunelab.errors import UserError
    from prunelab.training import train as run
    from tests.integration.conftest import compose_cfg

    cfg = compose_cfg(run_dir, list(overrides))
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        run(cfg, run_dir, choices=choices)
    except UserError as e:
        return Run(2, "", f"error: {e}\n", run_dir)
    return Run(0, "", "", run_dir)


def read_hypotheses(run_dir: Path) -> list[str]:
    """The run's test.hyp.txt, one line per test sentence (an empty translation is an empty line)."""
    text = (run_dir / "test.hyp.txt").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def read_test_split(results: dict) -> tuple[list[str], list[str]]:
    """(inputs, references or gold labels) of the test split, read again independently of the run: the data
    module its results.json recorded, rebuilt here, and its raw test text."""
    from hydra.utils import instantiate

    return instantiate(results["config"]["data"]).read_split("test")


def check_scores_from_files(run: Run) -> None:
    """results.json's test scores, recomputed from what the run wrote (test.hyp.txt) and the references:
    sacrebleu BLEU and TER for translation, accuracy for classification."""
    import sacrebleu

    res, hyps = run.results, read_hypotheses(run.dir)
    _, refs = read_test_split(res)
    assert len(hyps) == len(refs)
    if "test/acc" in res["metrics"]:
        acc = sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs)
        assert res["metrics"]["test/acc"] == pytest.approx(acc, abs=1e-6)
    else:
        assert res["metrics"]["test/bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)
        assert res["metrics"]["test/ter"] == pytest.approx(sacrebleu.corpus_ter(hyps, [refs]).score, abs=1e-4)


@pytest.fixture
def smoke() -> list[str]:
    """A seconds-long configuration that still trains, validates, tests and writes results."""
    return ["experiment=smoke", "logger=csv"]


def write_corpus(root: Path, n: int = 60, langs: tuple[str, str] = ("en", "de")) -> Path:
    """A tiny parallel corpus in the raw layout {train,valid,test}.{lang}: 'x y' -> reversed words."""
    root.mkdir(parents=True, exist_ok=True)
    words = ["red", "blue", "cat", "dog", "sees", "big", "small", "house", "tree", "runs"]
    for split, size in (("train", n), ("valid", 8), ("test", 8)):
        src = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(2 + i % 4)) for i in range(size)]
        tgt = [" ".join(reversed(s.split())).upper() for s in src]
        (root / f"{split}.{langs[0]}").write_text("\n".join(src) + "\n", encoding="utf-8")
        (root / f"{split}.{langs[1]}").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return root


def assert_export_round_trip(run_dir: Path) -> None:
    """`prunelab export` of a real run reloads (load_sparse) to the outputs of the run's tested model, rebuilt
    independently through load_run: exactly, in fp32 (classifiers and head-pruned runs included)."""
    import torch

    from prunelab.export import export_run, load_sparse
    from prunelab.training import load_run

    reference = load_run(run_dir).model
    exported = load_sparse(export_run(run_dir, run_dir / "exported.pt")[0])
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, reference.cfg.vocab_size, (3, 9), generator=g)
    args = (
        (src,)
        if not reference.cfg.dec_layers
        else (src, torch.randint(4, reference.cfg.vocab_size, (3, 7), generator=g))
    )
    with torch.no_grad():
        assert torch.equal(exported(*args), reference(*args))
    assert {k: v.shape for k, v in exported.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }


def load_experiment_report(paper: str) -> ModuleType:
    """experiments/<paper>/report.py, imported as the run scripts run it (python -m experiments.<paper>.report)."""
    import importlib

    return importlib.import_module(f"experiments.{paper}.report")
