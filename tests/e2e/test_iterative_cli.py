"""Each lottery-ticket technique runs and reports every level it passed (train.py's composition and train(), in this
process), and an iterative run from the command line sends its curve to W&B."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.e2e.conftest import train, train_here

EXPECTED_LEVELS = {  # sparsity of each round for target 0.7 with levels [0.4, 0.7]
    "lt": [0.0, 0.4, 0.7],
    "slt": [0.0, 0.4, 0.7],
    "clt": [0.0, 0.4, 0.7],
    "slt_mp": [0.0, 0.5, 0.6, 0.7],  # SLT 50%, 60%, then the MP round to the target
    "mp_slt": [0.6, 0.7],  # the MP round to s_i = 0.6, then SLT
}


@pytest.mark.parametrize("pruner", sorted(EXPECTED_LEVELS))
def test_technique_runs_and_draws_its_curve(tmp_path: Path, smoke: list[str], pruner: str) -> None:
    levels = [] if pruner.endswith("mp") else ["pruner.levels=[0.4,0.7]"]
    if pruner == "mp_slt":
        levels = ["pruner.levels=[0.7]"]
    run = train_here(
        tmp_path / "run",
        *smoke,
        f"pruner={pruner}",
        "sparsity=0.7",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        *levels,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert [round(lv["sparsity"], 2) for lv in res["levels"]] == EXPECTED_LEVELS[pruner]
    assert abs(res["sparsity"]["overall"] - 0.7) < 0.005
    rows = list(csv.DictReader((run.dir / "curve.csv").open()))
    assert [round(float(r["sparsity"]), 2) for r in rows] == EXPECTED_LEVELS[pruner]
    assert [float(r["test/bleu"]) for r in rows] == [lv["metrics"]["test/bleu"] for lv in res["levels"]]
    assert (run.dir / "curve.png").stat().st_size > 1000
    for k in range(len(EXPECTED_LEVELS[pruner])):
        assert (run.dir / "checkpoints" / f"round_{k}" / "results.json").exists()


def test_iterative_run_sends_its_curve_to_wandb(tmp_path: Path) -> None:
    from tests.e2e.wandb_log import history

    run = train(
        tmp_path / "run",
        "experiment=smoke",
        "logger=wandb",
        "pruner=slt",
        "sparsity=0.5",
        "pruner.levels=[0.5]",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (wandb_file,) = (run.dir / "wandb").glob("offline-run-*/run-*.wandb")
    h = history(wandb_file)
    # the table (and the plot tables) are re-sent after every round with all levels so far
    assert h["levels/table/nrows"] == [1.0, 2.0]
    assert h["levels/bleu_vs_sparsity_table/nrows"][-1] == 2.0
