"""An iterative run killed inside a round, between rounds or during its final test resumes to the same result
as an uninterrupted one: same final masks (exactly), same BLEU. A second uninterrupted run with the same seed
(deterministic=true, checkpoints.keep_rounds=1, W&B asked to go online without an API key) gives the same
results too, keeps only its last round's checkpoints, and logs offline."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunelab.training.io import checkpoint_masks
from tests.e2e.conftest import ROOT, Run, run_env, train

BASE = [
    "experiment=smoke",
    "pruner=slt",
    "sparsity=0.6",
    "pruner.levels=[0.3,0.6]",
    "trainer.max_steps=24",
    "trainer.val_check_interval=8",
    "data.train_size=300",
]
ARGS = [*BASE, "logger=csv"]
pytestmark = pytest.mark.xdist_group("resume")  # one worker runs the module-scoped runs once


def final_masks(run_dir: Path) -> dict[str, torch.Tensor]:
    best = json.loads((run_dir / "results.json").read_text())["best_checkpoint"]
    state = torch.load(best, weights_only=True)["state_dict"]
    return checkpoint_masks(state)


def reached(target: Path, text: str | None, last_size: int) -> bool:
    """`target` is complete (written and no longer growing), or, with `text`, holds a line containing it."""
    if not target.exists():
        return False
    if text is not None:
        return text in target.read_text(errors="replace")
    return target.stat().st_size == last_size > 0


def kill_when(
    run_dir: Path, marker: str, text: str | None = None, timeout: float = 300, args: list[str] = ARGS
) -> None:
    """Start the run and SIGKILL it as soon as `marker` (a path under run_dir) is complete, or holds `text`."""
    cmd = [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline, last_size = run_dir / marker, time.monotonic() + timeout, -1
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if reached(target, text, last_size):
                break
            last_size = target.stat().st_size if target.exists() else -1
            time.sleep(0.005)  # the final test of the tiny run lasts a fraction of a second: the kill must land in it
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = train(tmp_path_factory.mktemp("ref") / "run", *ARGS)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [round(lv["sparsity"], 2) for lv in run.results["levels"]] == [0.0, 0.3, 0.6]
    return run.dir


@pytest.mark.parametrize(
    ("marker", "text"),
    [
        ("checkpoints/round_1/last.ckpt", None),
        ("checkpoints/round_1/round_end.ckpt", None),
        ("train.log", "test: "),  # the log line that starts a test, of the last round (see below)
    ],
    ids=["inside_a_round", "between_rounds", "during_the_final_test"],
)
def test_killed_run_resumes_to_the_same_masks(tmp_path: Path, reference: Path, marker: str, text: str | None) -> None:
    run_dir = tmp_path / "run"
    if text is not None:  # the final test: the one that tests round 2's best checkpoint
        text += str(run_dir / "checkpoints" / "round_2" / "best.ckpt")
    kill_when(run_dir, marker, text)
    assert not (run_dir / "checkpoints" / "round_2" / "round_end.ckpt").exists()
    if text is not None:  # killed inside the final test: the last level has no figures yet
        assert not (run_dir / "checkpoints" / "round_2" / "results.json").exists()
        assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    resumed = train(run_dir, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_masks, got = final_masks(reference), final_masks(run_dir)
    assert ref_masks.keys() == got.keys()
    for k in ref_masks:
        assert torch.equal(ref_masks[k], got[k]), k
    ref = json.loads((reference / "results.json").read_text())
    assert resumed.results["metrics"]["test/bleu"] == pytest.approx(ref["metrics"]["test/bleu"], abs=1e-6)
    assert [lv["round"] for lv in resumed.results["levels"]] == [0, 1, 2]
    # the tokens trained count the steps before the kill too (this process's alone are fewer)
    assert resumed.results["train"]["tokens"] == ref["train"]["tokens"] > 0


# --- with dropout: a resumed run draws the same dropout masks ----------------------------------------------
DROPOUT = [*ARGS, "model.dropout=0.1"]


@pytest.fixture(scope="module")
def reference_with_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = train(tmp_path_factory.mktemp("ref_dropout") / "run", *DROPOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.dir


@pytest.mark.parametrize(
    "marker",
    ["checkpoints/round_1/last.ckpt", "checkpoints/round_1/round_end.ckpt"],
    ids=["inside_a_round", "between_rounds"],
)
def test_with_dropout_a_resumed_run_trains_as_the_uninterrupted_one(
    tmp_path: Path, reference_with_dropout: Path, marker: str
) -> None:
    """Inside a round the generators' state comes back with last.ckpt; a fresh round starts from its own seed.
    Without either, the resumed run draws other dropout masks from where it is resumed: other weights, other
    losses, other masks."""
    run_dir = tmp_path / "run"
    kill_when(run_dir, marker, args=DROPOUT)
    assert not (run_dir / "checkpoints" / "round_2" / "round_end.ckpt").exists()
    resumed = train(run_dir, *DROPOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = json.loads((reference_with_dropout / "results.json").read_text())
    for got, want in zip(resumed.results["levels"], ref["levels"], strict=True):
        assert got["metrics"] == pytest.approx(want["metrics"], abs=1e-6), got["round"]
    assert resumed.results["train"]["tokens"] == ref["train"]["tokens"]
    ref_masks, got_masks = final_masks(reference_with_dropout), final_masks(run_dir)
    assert all(torch.equal(ref_masks[k], got_masks[k]) for k in ref_masks)


# --- the same run again: deterministic, pruned checkpoints, W&B without a key -----------------------------
@pytest.fixture(scope="module")
def again(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("again")
    run = train(
        tmp / "run",
        *BASE,
        "deterministic=true",
        "checkpoints.keep_rounds=1",
        "logger=wandb",
        "logger.mode=online",
        env={"WANDB_API_KEY": None, "WANDB_BASE_URL": None, "NETRC": str(tmp / "no-netrc")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_same_seed_gives_identical_results(reference: Path, again: Run) -> None:
    ref = json.loads((reference / "results.json").read_text())
    assert again.results["metrics"] == ref["metrics"]  # exactly, every metric
    assert [lv["metrics"] for lv in again.results["levels"]] == [lv["metrics"] for lv in ref["levels"]]
    assert again.results["sparsity"] == ref["sparsity"]
    ref_masks, got = final_masks(reference), final_masks(again.dir)
    assert all(torch.equal(ref_masks[k], got[k]) for k in ref_masks)


def test_keep_rounds_deletes_the_checkpoints_of_older_rounds(again: Run) -> None:
    ckpts = again.dir / "checkpoints"
    for r in (0, 1):  # older rounds keep their figures, not their weights
        assert not list((ckpts / f"round_{r}").glob("*.ckpt"))
        assert json.loads((ckpts / f"round_{r}" / "results.json").read_text())["best_checkpoint"] is None
        assert (ckpts / f"round_{r}" / "test.hyp.txt").exists()
    assert sorted(p.name for p in (ckpts / "round_2").glob("*.ckpt")) == ["best.ckpt", "last.ckpt", "round_end.ckpt"]
    levels = again.results["levels"]
    assert [lv["best_checkpoint"] for lv in levels[:2]] == [None, None]
    assert again.results["best_checkpoint"] == str(ckpts / "round_2" / "best.ckpt") == levels[2]["best_checkpoint"]
    # a finished run with pruned checkpoints is still recognised as finished (the rerun shares the folder: its
    # results are compared with what the first run had written before the rerun started)
    before = again.results
    rerun = train(again.dir, *BASE, "checkpoints.keep_rounds=1", "logger=csv")
    assert rerun.returncode == 0 and "rounds 0-2 already finished" in rerun.stdout + rerun.stderr
    assert rerun.results["metrics"] == before["metrics"]


def test_wandb_online_without_api_key_warns_once_and_logs_offline(again: Run) -> None:
    warning = (
        f"W&B: no API key (set WANDB_API_KEY or run `wandb login`; none for api.wandb.ai in "
        f"{again.dir.parent / 'no-netrc'}); logging offline instead (upload later: wandb sync "
        f"{again.dir / 'wandb' / 'offline-run-*'})"
    )
    assert (again.stdout + again.stderr).count(warning) == 1, again.stdout[-3000:]
    assert len(list((again.dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    assert (again.dir / "curve.png").stat().st_size > 0 and (again.dir / "curve.csv").exists()
