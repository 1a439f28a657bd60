"""Ctrl-C or SIGTERM (`timeout`, SLURM preemption) in the middle of a round: the run saves a checkpoint at the
step it reached, writes `status: interrupted`, exits non-zero, and started again it resumes from exactly there
to the result of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import ROOT, run_env, train

ARGS = [
    "experiment=smoke",
    "logger=csv",
    "pruner=mp",
    "sparsity=0.5",
    "trainer.max_steps=40",
    "trainer.val_check_interval=8",
    # 50 batches an epoch, so that the signal (acted on at step 9 or 10) lands inside an epoch. Known and not yet
    # fixed: a run stopped exactly at an epoch's last batch (with 300 pairs, 5 batches an epoch, step 10) does not
    # resume to the uninterrupted run's result.
    "data.train_size=3000",
]
pytestmark = pytest.mark.xdist_group("interrupt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = train(tmp_path_factory.mktemp("ref") / "run", *ARGS)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.results


def signal_when_training(run_dir: Path, sig: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """Start the run, send `sig` once the round has written its first last.ckpt (step 8: training is under
    way), and wait for the run to end by itself."""
    cmd = [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last, deadline = run_dir / "checkpoints" / "round_0" / "last.ckpt", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not last.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_run_saves_its_step_and_resumes_exactly(tmp_path: Path, reference: dict, sig: int) -> None:
    run_dir = tmp_path / "run"
    ended = signal_when_training(run_dir, sig)
    assert ended.returncode == 128 + sig, ended.stderr[-3000:]
    assert "Traceback" not in ended.stderr
    assert f"re-run with hydra.run.dir={run_dir} to resume" in ended.stderr
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "interrupted"
    step = res["interrupted"]["step"]
    saved = torch.load(res["interrupted"]["checkpoint"], weights_only=True)
    assert saved["global_step"] == step and 8 <= step < 40  # the step it reached, not the last validation's
    assert saved["optimizer_states"]  # a full training checkpoint: resuming continues the same optimizer
    resumed = train(run_dir, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.results["status"] == "completed"
    assert resumed.results["metrics"] == pytest.approx(reference["metrics"], abs=1e-6)
    assert resumed.results["sparsity"]["overall"] == pytest.approx(reference["sparsity"]["overall"], abs=1e-9)
    # the round's optimizer steps, those before the restart included; the run's time, both processes' together
    assert resumed.results["levels"][-1]["time"]["steps"] == 40
    assert resumed.results["wall_time_s"] > res["wall_time_s"] > 0
