"""Early stopping pinned: a round waits for its monitored score to stop RISING, for every score prunelab
monitors (translation's BLEU; a classifier's accuracy, macro-F1 or Matthews correlation, which may be negative).

Definition (training.budget.PatienceStop, built by training.build.build_trainer with `early_stopping.patience`):
a validation whose score is higher than the best so far resets the wait; any other finite score adds one to it;
the round stops at the validation where the wait reaches `patience`. A NaN score (the mask not final yet)
neither counts nor resets. The Trainer is the one `build_trainer` builds for a round; a scripted module logs the
given score under the task's own monitor name at each validation (one per training step).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from prunelab.models import build_classifier
from prunelab.pruning import NoPruner
from prunelab.tasks import ClassificationTask
from prunelab.tasks.classification import METRICS
from prunelab.tasks.translation import TranslationTask
from prunelab.training.build import build_trainer
from tests.integration.conftest import run_cfg

NAN = float("nan")


def monitors() -> dict[str, tuple[float, float]]:
    """Every task's monitor name -> the range its score lives in."""
    found = {TranslationTask.monitor: (0.0, 100.0)}  # BLEU
    model = build_classifier(num_classes=2, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=1)
    for metric in METRICS:
        task = ClassificationTask(model, NoPruner(), labels=["a", "b"], metric=metric)
        found[task.monitor] = (-1.0, 1.0) if metric == "mcc" else (0.0, 1.0)
    return found


MONITORS = monitors()


class Scripted(L.LightningModule):
    """Logs `scores[i]` as `monitor` at the i-th validation; trains nothing."""

    def __init__(self, monitor: str, scores: list[float]):
        super().__init__()
        self.monitor, self.scores, self.validations = monitor, scores, 0
        self.w = torch.nn.Parameter(torch.zeros(1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4 * len(self.scores), 1)), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(1, 1)), batch_size=1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return (self.w * batch[0]).sum()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.log(self.monitor, self.scores[self.validations])
        self.validations += 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@functools.cache
def config(patience: int) -> DictConfig:
    """A run's config with early stopping after `patience` validations, one validation per step."""
    return run_cfg(
        ["trainer.val_check_interval=1", "trainer.num_sanity_val_steps=0", f"early_stopping.patience={patience}"]
    )


def validations_until_stop(tmp_path: Path, monitor: str, scores: list[float], patience: int = 2) -> int:
    """How many of `scores` a round validates before early stopping ends it (all of them: it never stopped)."""
    cfg = config(patience)
    trainer, _, _ = build_trainer(cfg, tmp_path / "round_0", False, len(scores), monitor)
    trainer.fit(module := Scripted(monitor, scores))
    return module.validations


def rising(lo: float, hi: float, n: int) -> list[float]:
    """n scores rising from 10% to 90% of the range, each above the last."""
    return [lo + (hi - lo) * (0.1 + 0.8 * i / (n - 1)) for i in range(n)]


@pytest.mark.parametrize("monitor", MONITORS)
def test_a_rising_score_never_stops_a_round(tmp_path: Path, monitor: str) -> None:
    lo, hi = MONITORS[monitor]
    scores = rising(lo, hi, 8)
    assert validations_until_stop(tmp_path, monitor, scores) == len(scores)
    # rising only between masks not final yet (NaN) is still rising
    with_nans = [scores[0], NAN, NAN, NAN, scores[1], NAN, scores[2], NAN, NAN, scores[3]]
    assert validations_until_stop(tmp_path / "nan", monitor, with_nans) == len(with_nans)


@pytest.mark.parametrize("monitor", MONITORS)
def test_a_falling_score_stops_after_patience_validations(tmp_path: Path, monitor: str) -> None:
    lo, hi = MONITORS[monitor]
    scores = rising(lo, hi, 8)[::-1]  # the first is the best: every later one adds to the wait
    assert validations_until_stop(tmp_path, monitor, scores, patience=3) == 1 + 3
    # a plateau is no improvement either
    assert validations_until_stop(tmp_path / "flat", monitor, [scores[4]] * 8, patience=2) == 1 + 2


@pytest.mark.parametrize("monitor", MONITORS)
def test_nan_scores_neither_count_nor_reset_the_wait(tmp_path: Path, monitor: str) -> None:
    lo, hi = MONITORS[monitor]
    best, worse = rising(lo, hi, 3)[2], rising(lo, hi, 3)[0]
    # NaNs before any score and between the worse ones: the stop comes at the second worse score (patience 2);
    # counting a NaN as worse would stop at the second NaN, resetting on it would not stop at all
    scores = [NAN, NAN, NAN, best, NAN, NAN, worse, NAN, NAN, worse, best, best]
    assert validations_until_stop(tmp_path, monitor, scores) == 10
    assert math.isnan(scores[8]) and scores[9] == worse
