"""The foundation's acceptance runs, with the real default configuration. The exact default run (`python train.py`,
about 5 minutes of a core) is marked `acceptance`: `make acceptance` runs it, `make test` does not; the MP run here
is a shortened default run and stays in `make test`.

The 95%-sparsity difficulty check (MP to 0.95 costs >= 5 BLEU) lives in
experiments/synthetic_difficulty.py, since it needs two more full runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.training.io import mask_key
from tests.e2e.conftest import train
from tests.e2e.wandb_log import history


@pytest.mark.acceptance
def test_default_run_reaches_bleu_80(tmp_path: Path) -> None:
    run = train(tmp_path / "run", timeout=1200)  # exactly `python train.py`: default groups, W&B offline
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed"
    assert res["metrics"]["test/bleu"] >= 80.0, res["metrics"]
    (wandb_file,) = (run.dir / "wandb").glob("offline-run-*/run-*.wandb")
    val_bleu = history(wandb_file)["val/bleu"]
    assert len(val_bleu) >= 6 and val_bleu[-1] > val_bleu[0]  # the history of a model that learned


@pytest.mark.slow
def test_mp_run_hits_90_percent(tmp_path: Path) -> None:
    # the default model, data and pruner settings; 80 of the default 1,200 steps and greedy decoding (the check
    # is the schedule reaching its target and sparing biases and norms, not BLEU: that is the acceptance run above)
    run = train(
        tmp_path / "run",
        "pruner=mp",
        "sparsity=0.9",
        "logger=csv",
        "trainer.max_steps=80",
        "trainer.val_check_interval=40",
        "task.beam_size=1",
        timeout=1200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert abs(res["sparsity"]["overall"] - 0.9) < 0.005
    state = torch.load(res["best_checkpoint"], weights_only=True)["state_dict"]
    for key, value in state.items():
        if key.startswith("model.") and value.dim() == 1 and "pos" not in key:
            assert bool((value != 0).any()), f"{key} was zeroed"  # biases and norms keep their values
            assert mask_key(key.removeprefix("model.")) not in state
