"""CONTRIBUTING.md's steps for a new task kind, followed by tests/worked_example/regression.py: a regression task
added with its data file, its task file, its scorer and YAML only (on Hydra's search path, nothing in src/prunelab
or conf/ changed), trained, pruned and studied through the same trunk as the built-in kinds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from prunelab.cli.train import CONF_DIR
from prunelab.training import load_run, train
from tests.worked_example.regression import NegatedMseScorer

pytestmark = pytest.mark.xdist_group("worked_example")  # the module's trained run, once
EXAMPLE_CONF = Path(__file__).resolve().parents[1] / "worked_example" / "conf"
RUN = ["data=toy_regression", "model=classifier_tiny", "logger=csv", "trainer.max_steps=60"]
RUN += ["trainer.val_check_interval=30", "trainer.enable_progress_bar=false"]


def cfg_of(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"hydra.searchpath=[file://{EXAMPLE_CONF}]", *overrides])


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("regression") / "dense"
    return out, train(cfg_of(RUN), out)


def test_a_new_task_kind_trains_and_scores_by_its_own_metric(dense: tuple[Path, dict]) -> None:
    """The run is the task's: scored by MSE (lower is better), and test/mse equals the mean squared error of the
    predictions it wrote (test.hyp.txt) against the word counts, recomputed here from the data."""
    out, res = dense
    assert res["status"] == "completed" and res["score"] == {"key": "mse", "name": "mean squared error"}
    preds = [float(line) for line in (out / "test.hyp.txt").read_text().splitlines()]
    dm = instantiate(res["config"]["data"])
    texts, _ = dm.read_split("test")
    targets = [len(t.split()) for t in texts]
    assert len(preds) == len(targets) == 100
    mse = sum((p - t) ** 2 for p, t in zip(preds, targets, strict=True)) / len(targets)
    assert res["metrics"]["test/mse"] == pytest.approx(mse)
    spread = sum((t - sum(targets) / len(targets)) ** 2 for t in targets) / len(targets)
    assert res["metrics"]["test/mse"] < spread  # it learned something: better than predicting the mean


def test_the_generic_pruners_and_studies_take_the_new_kind(dense: tuple[Path, dict], tmp_path: Path) -> None:
    """MP to 50% of the weights, from the trained run; its scorer ranks by negated MSE, equal to the task's own."""
    out, _ = dense
    res = train(cfg_of([*RUN, "pruner=mp", "sparsity=0.5", f"ckpt={out}", "trainer.max_steps=20"]), tmp_path / "mp")
    assert res["status"] == "completed" and res["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    assert math.isfinite(res["metrics"]["test/mse"])
    run = load_run(tmp_path / "mp", data=True)
    batches = list(run.datamodule.test_dataloader())
    with torch.no_grad():
        assert -NegatedMseScorer().score(run.model, batches) == pytest.approx(res["metrics"]["test/mse"], rel=1e-5)
