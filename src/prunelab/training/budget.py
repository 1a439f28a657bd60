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
NaN (a gradual pruner's mask not final yet: not a worse score, no score at all).

Steps are optimizer steps (the Trainer's global step): with `trainer.accumulate_grad_batches=k` a step is k batches,
and a resumed round counts the steps it trained before the restart. `RunClock` is the run's wall time across
processes: a run killed at 50 of 60 minutes and resumed has 10 minutes left, not 60 (`<run>/run_time.json`).
`StepBudget` is what the round loop hands the task: the round's `max_steps` and its clock."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping

from prunelab.errors import UserError
from prunelab.training.io import is_rank_zero, write_json


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


class RunClock:
    """The run's wall time, across the processes that worked on it: what earlier processes spent (read from
    `path`, which this one keeps up to date every `every_s` seconds while it trains) plus this process's time so
    far. `trainer.max_time` is a budget for the whole run: a resumed run gets what is left of it."""

    def __init__(self, path: Path, every_s: float = 5.0):
        self.path, self.every_s = Path(path), every_s
        try:
            saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            saved = {}
        self.before_s = float(saved.get("elapsed_s", 0.0))
        self.processes = int(saved.get("processes", 0)) + 1
        self.t0 = time.monotonic()
        self._saved_at = -math.inf

    def elapsed(self) -> float:
        return self.before_s + time.monotonic() - self.t0

    def save(self, force: bool = False) -> None:
        """Record the run's time so far (rank zero, at most every `every_s` seconds unless `force`)."""
        now = time.monotonic()
        if (force or now - self._saved_at >= self.every_s) and is_rank_zero():
            write_json(self.path, {"elapsed_s": self.elapsed(), "processes": self.processes})
            self._saved_at = now


class StageClock(L.Callback):
    """Wall time of one round's fit: training, validations, and (with `budget_s`) the stop that keeps the final
    validation and the test within the budget. `eval_factor`: the test's cost relative to one validation.
    `steps`: the round's optimizer steps (global step, a resumed round's earlier steps included); the rate is that
    of the steps trained by this process. `run_clock`: kept up to date as the round trains."""

    def __init__(self, budget_s: float | None = None, eval_factor: float = 1.0, run_clock: RunClock | None = None):
        self.budget_s = budget_s
        self.eval_factor = eval_factor
        self.run_clock = run_clock
        self.start: float | None = None
        self.end: float | None = None
        self.validate_s = 0.0
        self.last_validation_s = 0.0
        self.validations = 0
        self.steps = 0  # optimizer steps of the round so far
        self.first_step = 0  # the global step this process started training at (> 0 when resumed)
        self.stopped_by_budget = False
        self._v0: float | None = None

    @property
    def steps_here(self) -> int:
        """Optimizer steps trained by this process (the rate's numerator)."""
        return self.steps - self.first_step

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = time.monotonic()
        self.first_step = self.steps = int(getattr(trainer, "global_step", 0))

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.end = time.monotonic()
        if self.run_clock is not None:
            self.run_clock.save(force=True)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._v0 = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._v0 is not None:
            self.last_validation_s = time.monotonic() - self._v0
            self.validate_s += self.last_validation_s
            self.validations += 1
            self._v0 = None
            if self.run_clock is not None:
                self.run_clock.save()

    def elapsed(self) -> float:
        if self.start is None:
            return 0.0
        return (self.end or time.monotonic()) - self.start

    def train_s(self) -> float:
        return max(0.0, self.elapsed() - self.validate_s)

    def reserve(self) -> float:
        """Time to keep for what follows training: one more step, the validation at the stop, the validation and test
        of the best checkpoint; a fifth of the budget until a validation has been timed."""
        step = self.train_s() / self.steps_here if self.steps_here else 0.0
        if not self.validations:
            return step + 0.2 * (self.budget_s or 0.0)
        return step + self.last_validation_s * (2.0 + self.eval_factor)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        self.steps = int(trainer.global_step)  # optimizer steps: k batches each under gradient accumulation
        if self.run_clock is not None:
            self.run_clock.save()
        if self.budget_s is not None and not trainer.should_stop:
            if self.elapsed() + self.reserve() >= self.budget_s:
                self.stopped_by_budget = True
                trainer.should_stop = True

    def estimated_total_steps(self, step: int) -> float:
        """The round's steps if training goes on at the rate so far until the budget (minus the reserve) is spent;
        inf without a budget or before a rate is known. When that is no more than `step`, the round ends by its
        budget (the task stops at total_steps), which `stopped_by_budget` records."""
        if self.budget_s is None or self.steps_here < 5 or self.train_s() <= 0:
            return math.inf
        rate = self.steps_here / self.train_s()
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


@dataclass
class StepBudget:
    """A round's step budget, handed to the task by the round loop before it trains: `max_steps`, and the round's
    clock, whose time budget (if any) may end the round sooner (`StageClock.estimated_total_steps`)."""

    max_steps: int
    clock: StageClock | None = None

    def total(self, step: int) -> float:
        """The round's steps as now estimated, at optimizer step `step`."""
        estimate = self.clock.estimated_total_steps(step) if self.clock is not None else math.inf
        return min(float(self.max_steps), estimate)


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
