"""`python train.py pruner=heads ckpt=RUN_DIR sparsity=...`: BLEU before and after removing heads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import assert_export_round_trip, train, train_here


def test_heads_pruner_on_a_trained_run(tmp_path: Path, smoke: list[str]) -> None:
    dense = train_here(tmp_path / "dense", *smoke)
    assert dense.returncode == 0, dense.stderr[-3000:]
    args = [*smoke, "pruner=heads", "sparsity=0.5", "pruner.finetune_steps=6", f"ckpt={dense.dir}"]
    run = train_here(tmp_path / "heads", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    levels = res["levels"]
    assert [lv["stage"] for lv in levels] == ["dense", "pruned", "fine-tuned"]
    # the dense level is the trained run itself, evaluated again: same test BLEU
    assert levels[0]["metrics"]["test/bleu"] == pytest.approx(dense.results["metrics"]["test/bleu"], abs=1e-6)
    assert [lv["sparsity"] for lv in levels] == [0.0, 0.5, 0.5]
    assert len(res["heads"]["removed"]) == 3  # smoke: 3 attention sub-layers x 2 heads
    assert res["params"]["total"] < dense.results["params"]["total"]
    assert res["params"]["before_pruning"] == dense.results["params"]["total"]
    assert res["metrics"] == levels[-1]["metrics"]
    assert (run.dir / "curve.csv").exists() and (run.dir / "curve.png").stat().st_size > 0
    assert_export_round_trip(run.dir)  # a head-pruned run's export reloads (it failed on the smaller shapes)

    # the pruned run is itself a starting point: its smaller shapes load, and nothing more is removed
    again = train_here(tmp_path / "again", *smoke, "pruner=heads", "sparsity=0.5", f"ckpt={run.dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    lv0 = again.results["levels"][0]
    assert lv0["metrics"]["test/bleu"] == pytest.approx(res["metrics"]["test/bleu"], abs=1e-6)
    assert again.results["heads"]["removed"] == res["heads"]["removed"]  # the same three, none more
    assert [lv["sparsity"] for lv in again.results["levels"]] == [0.5, 0.5]
    assert again.results["params"]["total"] == res["params"]["total"]


@pytest.mark.parametrize(
    ("ckpt", "message"),
    [("does/not/exist.ckpt", ": no such file"), (".", ": a folder must be a run folder with results.json")],
)
def test_bad_ckpt_is_one_clear_line(tmp_path: Path, smoke: list[str], ckpt: str, message: str) -> None:
    target = tmp_path / ckpt if ckpt != "." else tmp_path
    run = train(tmp_path / "run", *smoke, "pruner=heads", "sparsity=0.5", f"ckpt={target}")
    assert run.returncode == 2
    assert [ln for ln in run.stderr.splitlines() if ln.startswith("error:")] == [f"error: ckpt={target}{message}"]
    assert "Traceback" not in run.stderr
    assert run.results["status"] == "failed" and run.results["metrics"] == {}


def test_ckpt_of_another_model_shape(tmp_path: Path, smoke: list[str]) -> None:
    dense = train(tmp_path / "dense", *smoke)
    assert dense.returncode == 0, dense.stderr[-3000:]
    run = train(tmp_path / "run", *smoke, "model.d_model=48", f"ckpt={dense.dir}")
    assert run.returncode == 2
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    best = dense.dir / "checkpoints" / "round_0" / "best.ckpt"
    assert len(errors) == 1 and re.fullmatch(
        rf"error: ckpt={re.escape(str(best))} does not fit this model \(another model shape or vocabulary\?\): "
        r"size mismatch for \S+: copying a param with shape torch\.Size\(\[\d+, 32\]\) from checkpoint, "
        r"the shape in current model is torch\.Size\(\[\d+, 48\]\)\.",
        errors[0],
    ), errors
    assert "Traceback" not in run.stderr and run.results["metrics"] == {}
