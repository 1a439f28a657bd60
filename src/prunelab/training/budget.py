"""Training to a budget: where a round's wall time goes, the time budget (`trainer.max_time`), and early stopping.

`StageClock` is on in every round. It measures the round's training and its validations during fit, and, with a
budget, stops training early enough that the final validation and the test of the best checkpoint still fit:

    stop when  elapsed + one step + last validation x (2 + test cost / validation cost)  >=  the round's budget

(the validation Lightning runs at the stop, then the validation and test of the best checkpoint; until a
validation has been timed, a fifth of the budget is kept).

Lightning validates when training stops this way (`should_stop`), so the best checkpoint is chosen among every
validation, the last one included. `estimated_total_steps` turns the budget into a number of steps (the steps
trained so far at the rate so far, plus the time left for training): the task's `total_steps` takes the smaller of
it and `trainer.max_steps`, so the lr schedule and gradual pruning end with the budget rather than at max_steps.

`PatienceStop` is Lightning's EarlyStopping on the round's monitored score that skips validations whose score is
NaN (a gradual pruner's mask not final yet: not a worse score, no score at all)."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from prunelab.errors import UserError


def seconds(max_time: Any) -> float | None:
    """`trainer.max_time` as Lightning takes it ("DD:HH:MM:SS", a dict of timedelta fields, a timedelta) or plain
    seconds -> seconds; None stays None."""
    if max_time is None:
        return None
    if isinstance(max_time, int | float):
        value = float(max_time)
    elif isinstance(max_time, timedelta):
        value = max_time.total_seconds()
    elif isinstance(max_time, dict):
        value = timedelta(**max_time).total_seconds()
    elif isinstance(max_time, str):
        parts = max_time.split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise UserError(f"trainer.max_time must be DD:HH:MM:SS (e.g. 00:00:25:00) or seconds, got {max_time!r}")
        d, h, m, s = (int(p) for p in parts)
        value = float(((d * 24 + h) * 60 + m) * 60 + s)
    else:
        raise UserError(f"trainer.max_time must be DD:HH:MM:SS or seconds, got {max_time!r}")
    if value <= 0:
        raise UserError(f"trainer.max_time must be positive, got {max_time!r}")
    return value


class StageClock(L.Callback):
    """Wall time of one round's fit: training, validations, and (with `budget_s`) the stop that keeps the final
    validation and the test within the budget. `eval_factor`: the test's cost relative to one validation."""

    def __init__(self, budget_s: float | None = None, eval_factor: float = 1.0):
        self.budget_s = budget_s
        self.eval_factor = eval_factor
        self.start: float | None = None
        self.end: float | None = None
        self.validate_s = 0.0
        self.last_validation_s = 0.0
        self.validations = 0
        self.steps = 0
        self.stopped_by_budget = False
        self._v0: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.end = time.monotonic()

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._v0 = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._v0 is not None:
            self.last_validation_s = time.monotonic() - self._v0
            self.validate_s += self.last_validation_s
            self.validations += 1
            self._v0 = None

    def elapsed(self) -> float:
        if self.start is None:
            return 0.0
        return (self.end or time.monotonic()) - self.start

    def train_s(self) -> float:
        return max(0.0, self.elapsed() - self.validate_s)

    def reserve(self) -> float:
        """Time to keep for what follows training: one more step, the validation at the stop, the validation and test
        of the best checkpoint; a fifth of the budget until a validation has been timed."""
        step = self.train_s() / self.steps if self.steps else 0.0
        if not self.validations:
            return step + 0.2 * (self.budget_s or 0.0)
        return step + self.last_validation_s * (2.0 + self.eval_factor)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.steps += 1
        if self.budget_s is not None and not trainer.should_stop:
            if self.elapsed() + self.reserve() >= self.budget_s:
                self.stopped_by_budget = True
                trainer.should_stop = True

    def estimated_total_steps(self, step: int) -> float:
        """The round's steps if training goes on at the rate so far until the budget (minus the reserve) is spent;
        inf without a budget or before a rate is known. When that is no more than `step`, the round ends by its
        budget (the task stops at total_steps), which `stopped_by_budget` records."""
        if self.budget_s is None or self.steps < 5 or self.train_s() <= 0:
            return math.inf
        rate = self.steps / self.train_s()
        left = max(0.0, self.budget_s - self.elapsed() - self.reserve())
        # validations still to come take their share of the time left
        train_share = self.train_s() / self.elapsed() if self.elapsed() > 0 else 1.0
        total = step + rate * left * train_share
        if int(total) <= step:  # the task stops at int(total_steps): not one more whole step fits, the budget ended it
            self.stopped_by_budget = True
        return total

    def report(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "train_s": self.train_s(),
            "validate_s": self.validate_s,
            "validations": self.validations,
            "budget_s": self.budget_s,
            "stopped_by_budget": self.stopped_by_budget,
        }


class PatienceStop(EarlyStopping):
    """EarlyStopping(mode="max") on the monitored score, `patience` validations without improvement; validations
    whose score is NaN (the mask not final yet) neither count nor reset the wait."""

    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0):
        super().__init__(
            monitor=monitor,
            mode="max",
            patience=patience,
            min_delta=min_delta,
            strict=False,
            check_finite=False,
            check_on_train_epoch_end=False,
        )

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        current = trainer.callback_metrics.get(self.monitor)
        if current is None or not math.isfinite(float(current)):
            return
        super()._run_early_stopping_check(trainer)
