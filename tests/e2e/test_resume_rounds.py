"""An iterative run killed inside a round or between rounds resumes to the same result as an
uninterrupted one: same final masks (exactly), same BLEU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import ROOT, train

ARGS = [
    "experiment=smoke",
    "logger=csv",
    "pruner=slt",
    "sparsity=0.6",
    "pruner.levels=[0.3,0.6]",
    "trainer.max_steps=24",
    "trainer.val_check_interval=8",
    "data.train_size=300",
]


def final_masks(run_dir: Path) -> dict[str, torch.Tensor]:
    import json

    best = json.loads((run_dir / "results.json").read_text())["best_checkpoint"]
    state = torch.load(best, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("pruner.mask__")}


def kill_when(run_dir: Path, marker: str, timeout: float = 300) -> None:
    """Start the run and SIGKILL it as soon as `marker` (a path under run_dir) exists and is complete."""
    cmd = [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "WANDB_SILENT": "true"}
    if "PYTEST_XDIST_WORKER" in os.environ:
        env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline, last_size = run_dir / marker, time.monotonic() + timeout, -1
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if target.exists() and target.stat().st_size == last_size > 0:  # written and no longer growing
                break
            last_size = target.stat().st_size if target.exists() else -1
            time.sleep(0.05)
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
    "marker",
    ["checkpoints/round_1/last.ckpt", "checkpoints/round_1/round_end.ckpt"],
    ids=["inside_a_round", "between_rounds"],
)
def test_killed_run_resumes_to_the_same_masks(tmp_path: Path, reference: Path, marker: str) -> None:
    run_dir = tmp_path / "run"
    kill_when(run_dir, marker)
    assert not (run_dir / "checkpoints" / "round_2" / "round_end.ckpt").exists()
    resumed = train(run_dir, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref_masks, got = final_masks(reference), final_masks(run_dir)
    assert ref_masks.keys() == got.keys()
    for k in ref_masks:
        assert torch.equal(ref_masks[k], got[k]), k
    import json

    ref = json.loads((reference / "results.json").read_text())
    assert resumed.results["metrics"]["test/bleu"] == pytest.approx(ref["metrics"]["test/bleu"], abs=1e-6)
    assert [lv["round"] for lv in resumed.results["levels"]] == [0, 1, 2]
