"""The round loop: one `trainer.fit` per pruning round, each round a few small steps that first ask "already done?".

    for each round r of the pruner's plan:
        done earlier?  -> take its figures (and, for the latest such round, its state) and go on
        prepare        -> the round's Trainer; a fresh round lets the pruner rewind/mask, a started one resumes
        fit            -> train the round's steps (from last.ckpt when it was interrupted)
        evaluate       -> validate and test the round's best checkpoint
        record         -> the level's figures, the next mask (pruner.on_round_end), round_end.ckpt

Each round has `checkpoints/round_K/` with `best.ckpt`, `last.ckpt`, its own `results.json` (the level's
figures), `test.hyp.txt` and, once finished, `round_end.ckpt` (model + masks + snapshots, with the next
round's mask already set). Re-running over the same folder therefore resumes where the run stopped. With
`keep_rounds=N` only the N latest finished rounds keep their checkpoint files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from prunelab.callbacks.curves import record_levels
from prunelab.errors import NonFiniteError
from prunelab.training import interrupt
from prunelab.training.averaging import average_checkpoints, averaging_window, validation_scores
from prunelab.training.budget import RunClock, StageClock, StepBudget, seconds
from prunelab.training.build import AVERAGED_DIR, build_trainer
from prunelab.training.io import read_state, write_json

log = logging.getLogger("prunelab")
CHECKPOINT_FILES = ("best.ckpt", "last.ckpt", "round_end.ckpt", "averaged.ckpt")


PRETRAINED = -1  # the "round" of the weights a run starts from (imported or `ckpt=`), scored before any training


def round_dir_of(out: Path, r: int) -> Path:
    return out / "checkpoints" / ("pretrained" if r == PRETRAINED else f"round_{r}")


def latest_finished_round(out: Path, rounds: int) -> int:
    """The last round with its `round_end.ckpt` (rounds run in order: every earlier one finished too); -1: none."""
    return max((r for r in range(rounds) if (round_dir_of(out, r) / "round_end.ckpt").exists()), default=-1)


class SaveOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during fit: the round's `last.ckpt` at the end of the step training reached, then stop.
    A signal noted by prunelab's handler (interrupt.py) is handed to Lightning's own SIGTERM stop, which ends
    the step (scheduler step included), tells every DDP rank and raises; the checkpoint is saved then, before
    the Trainer tears down. (Stopping at the next step's start instead does not resume exactly.)"""

    def __init__(self, last: Path):
        self.last = last
        self.step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        if interrupt.requested() is not None:
            trainer._signal_connector.received_sigterm = True  # Lightning stops at this step's end

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, interrupt.Interrupted | SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(self.last, weights_only=False)
            self.step = trainer.global_step


def evaluate(trainer: L.Trainer, task: Any, datamodule: Any, best: str | None) -> dict[str, float]:
    """Validate and test the checkpoint `best` (its weights stay loaded in `task`); None: the weights as they are."""
    metrics: dict[str, float] = {}
    for stage in (trainer.validate, trainer.test):
        log.info("%s: %s", stage.__name__, best or "the current weights")
        (scores,) = stage(task, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        metrics.update({k: float(v) for k, v in scores.items() if not k.endswith("_at_target")})
    return metrics


def round_seed(seed: int, r: int) -> int:
    """The seed round `r` of a run seeded with `seed` starts from (a different one for every round and seed)."""
    return (seed * 1_000_003 + 7_919 * (r + 1)) % 2**32


@dataclass
class Rounds:
    """The rounds of one run (see the module docstring). `pretrained`: the model holds trained weights (`ckpt=`, or
    an imported checkpoint), which a pruner may evaluate without training, and which are scored as the first level
    when round 0 trains. `on_level` is told of every new level (results.json)."""

    cfg: DictConfig
    out: Path
    task: Any
    datamodule: Any
    logger: Any
    name: str
    on_level: Callable[[list[dict[str, Any]]], None]
    pretrained: bool = False
    levels: list[dict[str, Any]] = field(default_factory=list)
    fit_time: float = 0.0
    trainer_settings: dict[str, Any] = field(default_factory=dict)  # of the latest round's Trainer, as it runs
    run_clock: RunClock | None = None  # the run's time across restarts: trainer.max_time counts it (None: from now)
    clock: StageClock | None = None  # the latest round's
    evaluate_s: float = 0.0  # the latest round's final validation + test
    averaging: dict[str, Any] | None = None  # the latest round's checkpoint averaging (checkpoints.average_last)

    def run(self) -> list[dict[str, Any]]:
        if self.run_clock is None:
            self.run_clock = RunClock(self.out / "run_time.json")
        pruner = self.task.pruner
        pruner.use_data(self.datamodule, self.task)
        if self.pretrained and pruner.round_steps(0, self.cfg.trainer.max_steps, True) > 0:
            self.evaluate_start()  # round 0 trains: score the weights it starts from first
        finished = latest_finished_round(self.out, pruner.rounds)
        for r in range(pruner.rounds):
            if r <= finished:
                self.levels.append(self.load_finished(r, latest=r == finished))
                continue
            trainer, ckpt, steps = self.prepare(r)
            best, metrics, seconds = self.fit_and_evaluate(r, trainer, ckpt, steps)
            self.record(r, trainer, best, metrics, seconds)
        return self.levels

    def evaluate_start(self) -> None:
        """The level of the pretrained weights the run starts from (stage "pretrained", round -1): validated and
        tested as they are, before any round trains or prunes, so that a pretrained model's own score is the
        dense level of every method. Its figures go to `checkpoints/pretrained/` (no checkpoint: the weights are
        the checkpoint's); a resumed run reads them back."""
        d = round_dir_of(self.out, PRETRAINED)
        if (d / "results.json").exists():
            self.levels.append(json.loads((d / "results.json").read_text()))
            return
        trainer, _, _ = build_trainer(self.cfg, d, self.logger, 1, self.task.monitor)
        t0 = time.perf_counter()
        metrics = evaluate(trainer, self.task, self.datamodule, None)
        seconds = time.perf_counter() - t0
        timing = {"train_s": 0.0, "validate_s": 0.0, "evaluate_s": seconds}
        self.add_level(trainer, PRETRAINED, "pretrained", False, metrics, None, seconds, timing)

    def load_finished(self, r: int, latest: bool) -> dict[str, Any]:
        """A round finished earlier: its figures; for the latest such round also its state (weights, masks,
        removed heads, the pruner's own state), which the next round starts from."""
        d = round_dir_of(self.out, r)
        if latest:
            saved = read_state(d / "round_end.ckpt")
            self.task.on_load_checkpoint(saved)  # removed heads/components first, then the pruner's state
            self.task.load_state_dict(saved["state_dict"])
            self.task.pruner.enter_round(r)
            log.info("rounds 0-%d already finished: loaded %s", r, d / "round_end.ckpt")
        return json.loads((d / "results.json").read_text())

    def prepare(self, r: int) -> tuple[L.Trainer, ModelCheckpoint, int]:
        """The round's Trainer; the pruner starts the round (rewind, mask) unless it resumes from last.ckpt."""
        pruner = self.task.pruner
        self.averaging = None
        steps = pruner.round_steps(r, self.cfg.trainer.max_steps, self.pretrained)
        d = round_dir_of(self.out, r)
        trainer, ckpt, self.clock = build_trainer(
            self.cfg, d, self.logger, max(steps, 1), self.task.monitor, self.round_budget(r), self.eval_factor()
        )
        self.clock.run_clock = self.run_clock
        self.task.use_step_budget(StepBudget(max(steps, 1), self.clock))  # the lr schedule follows it from step 1
        self.trainer_settings = {
            "accelerator": type(trainer.accelerator).__name__,
            "strategy": type(trainer.strategy).__name__,
            "devices": trainer.num_devices,
            "precision": trainer.precision,
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
            "gradient_clip_val": trainer.gradient_clip_val,
        }
        if isinstance(report := getattr(trainer.strategy, "report", None), dict):  # hardware=fsdp: filled in at setup
            self.trainer_settings["fsdp"] = report
        if (d / "last.ckpt").exists():
            pruner.enter_round(r)  # the checkpoint holds the round's weights and masks
        else:
            # a fresh round draws from its own seed (dropout, a fresh initialisation): what it draws does not
            # depend on the rounds before it, so a run resumed between rounds draws the same (mid-round, the
            # generators' state comes back with last.ckpt: tasks.base)
            L.seed_everything(round_seed(self.cfg.seed, r), workers=True, verbose=False)
            pruner.on_round_start(self.task.model, r)
        log.info("round %d of %d: sparsity %.4f", r + 1, pruner.rounds, pruner.round_sparsity(r))
        return trainer, ckpt, steps

    def averaged(self, d: Path, trainer: L.Trainer, best: str) -> str:
        """With `checkpoints.average_last=N`: the average of the round's best validation checkpoint and the N-1
        before it, all with the round's final mask (training.averaging), validated beside the best checkpoint;
        the better of the two is the round's checkpoint (a tie keeps the best). `self.averaging` says what was
        averaged, both validation scores and which was kept (results.json). Without averaging, or with fewer than
        2 checkpoints to average: `best`."""
        n = (self.cfg.get("checkpoints") or {}).get("average_last")
        self.averaging = None
        if not n:
            return best
        folder = d / AVERAGED_DIR
        scores = validation_scores(folder)
        window = averaging_window(scores, int(n))
        if len(window) < 2:
            log.info("checkpoint averaging: %d final-mask validation checkpoint(s); testing the best", len(window))
            self.averaging = {"checkpoints": [f"step{s}.ckpt" for s in window], "chosen": "best"}
            return best
        out = average_checkpoints([folder / f"step{s}.ckpt" for s in window], d / "averaged.ckpt")
        key = f"val/{self.task.score_key}"
        (result,) = trainer.validate(self.task, datamodule=self.datamodule, ckpt_path=str(out), weights_only=True)
        average_score, best_score = float(result[key]), scores[window[-1]]
        if not self.task.higher_is_better:  # the monitored value is the negated score (perplexity)
            best_score = -best_score
        better = average_score > best_score if self.task.higher_is_better else average_score < best_score
        chosen = "average" if better else "best"
        log.info(
            "averaged %s: validation %s %.4f (best checkpoint %.4f): testing the %s",
            ", ".join(f"step{s}" for s in window),
            key,
            average_score,
            best_score,
            chosen,
        )
        self.averaging = {
            "checkpoints": [f"step{s}.ckpt" for s in window],
            "val_score_average": average_score,
            "val_score_best": best_score,
            "chosen": chosen,
        }
        return str(out) if chosen == "average" else best

    def round_budget(self, r: int) -> float | None:
        """`trainer.max_time` shared out: what is left of the run's budget, split evenly over the rounds still to
        train (a round that only evaluates takes none)."""
        total = seconds(self.cfg.trainer.get("max_time"))
        if total is None:
            return None
        pruner, max_steps = self.task.pruner, self.cfg.trainer.max_steps
        training = [q for q in range(r, pruner.rounds) if pruner.round_steps(q, max_steps, self.pretrained) > 0]
        elapsed = self.run_clock.elapsed() if self.run_clock is not None else 0.0
        left = total - elapsed  # the run's budget: time spent before a restart counts
        return max(left, 0.0) / max(1, len(training))

    def eval_factor(self) -> float:
        """The test's cost relative to one validation (the test set's size over the validation set's, and the test
        beam over the validation beam), for the time kept back from a budget."""
        examples = getattr(self.datamodule, "examples", {})
        n_valid, n_test = len(examples.get("valid", ())) or 1, len(examples.get("test", ())) or 1
        return n_test / n_valid * self.task.eval_cost_ratio()

    def fit_and_evaluate(
        self, r: int, trainer: L.Trainer, ckpt: ModelCheckpoint, steps: int
    ) -> tuple[str, dict[str, float], float]:
        """Train the round (resuming from last.ckpt), then score its best checkpoint. A round of 0 steps only
        evaluates the weights it starts from, which become its best checkpoint."""
        d = round_dir_of(self.out, r)
        last = d / "last.ckpt"
        t0 = time.perf_counter()
        if steps > 0:
            guard = SaveOnInterrupt(last)
            trainer.callbacks.append(guard)
            try:
                with interrupt.deferred():
                    resume = last if last.exists() else None
                    trainer.fit(self.task, datamodule=self.datamodule, ckpt_path=resume, weights_only=True)
            except NonFiniteError as e:  # the round's last good checkpoint stays as it is
                e.round, e.kept = r, str(last.relative_to(self.out)) if last.exists() else None
                raise
            except (interrupt.Interrupted, SIGTERMException) as e:
                signum = e.signum if isinstance(e, interrupt.Interrupted) else interrupt.requested() or 15
                raise interrupt.Interrupted(signum, guard.step, str(last)) from None
            best = self.averaged(d, trainer, ckpt.best_model_path)
            t_eval = time.perf_counter()
            metrics = evaluate(trainer, self.task, self.datamodule, best)
            self.evaluate_s = time.perf_counter() - t_eval
        else:
            t_eval = time.perf_counter()
            metrics = evaluate(trainer, self.task, self.datamodule, None)
            self.evaluate_s = time.perf_counter() - t_eval
            best = str(d / "best.ckpt")
            trainer.save_checkpoint(best, weights_only=True)
        return best, metrics, time.perf_counter() - t0

    def record(self, r: int, trainer: L.Trainer, best: str, metrics: dict[str, float], seconds: float) -> None:
        """The level's figures (results.json of the round and of the run, curves), then the next round's mask
        from the scored weights, then round_end.ckpt: from here on the round counts as done."""
        pruner, d = self.task.pruner, round_dir_of(self.out, r)
        self.fit_time += seconds
        # where the round's time went: training, validations during fit, validating + testing the best
        timing = {**(self.clock.report() if self.clock else {}), "evaluate_s": self.evaluate_s}
        extra: dict[str, Any] = {}
        if pruner.round_steps(r, self.cfg.trainer.max_steps, self.pretrained) > 0:
            extra["lr"] = self.task.schedule_report()
            if extra["lr"]["peak_lr_fraction_reached"] < 0.999:
                log.warning(
                    "round %d ended in its lr warm-up: the lr reached %.0f%% of its peak (%d steps, %s warm-up steps)",
                    r,
                    100 * extra["lr"]["peak_lr_fraction_reached"],
                    timing.get("steps", 0),
                    extra["lr"].get("warmup_steps", "?"),
                )
        if self.averaging is not None:
            extra["averaging"] = self.averaging
        # same_as_targeting: usable as that target's result in tables
        stage = pruner.stage(r)
        if stage is None and r == 0 and self.pretrained and not timing.get("steps") and not pruner.round_sparsity(r):
            stage = "pretrained"  # round 0 neither trained nor pruned: the level is the start weights as they are
        self.add_level(trainer, r, stage, pruner.same_as_targeting(r), metrics, best, seconds, timing, extra)
        if trainer.is_global_zero and (pruner.rounds > 1 or len(self.levels) > 1):  # iterative, or pretrained first
            record_levels(self.out, self.levels, self.logger, self.name)
        pruner.on_round_end(self.task.model, r)  # the next mask, from the scored (best) weights
        trainer.save_checkpoint(d / "round_end.ckpt", weights_only=True)
        if trainer.is_global_zero and self.drop_old_checkpoints():
            self.on_level(self.levels)

    def add_level(
        self,
        trainer: L.Trainer,
        r: int,
        stage: str | None,
        same_as_targeting: bool,
        metrics: dict[str, float],
        best: str | None,
        seconds: float,
        timing: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A level's figures, from the model as it was scored: kept, and written (results.json and test.hyp.txt of
        its folder, the run's results.json) by the first process; the other DDP processes hold the same figures."""
        report = self.task.pruner.report(self.task.model)
        level = {
            "round": r,
            **({"stage": stage} if stage else {}),
            "sparsity": report["sparsity"]["overall"],
            "same_as_targeting": same_as_targeting,
            "score": self.task.score,
            "metrics": metrics,
            "memory": report["memory"],
            "params": report["params"],
            "best_checkpoint": best,
            "fit_time_s": seconds,
            "time": timing,
            **(extra or {}),
        }
        self.levels.append(level)
        if trainer.is_global_zero:
            d = round_dir_of(self.out, r)
            write_json(d / "results.json", level)
            if hypotheses := self.task.last_eval["test"]["hypotheses"]:  # a language model has none
                (d / "test.hyp.txt").write_text("\n".join(hypotheses) + "\n")
            self.on_level(self.levels)

    def drop_old_checkpoints(self) -> bool:
        """Delete the checkpoint files of all but the `keep_rounds` latest finished rounds (None: keep all); their
        levels keep their figures, with `best_checkpoint` null. True when a level changed."""
        keep = self.cfg.get("checkpoints", {}).get("keep_rounds")
        if keep is None:
            return False
        changed = False
        for level in self.levels[: max(0, len(self.levels) - keep)]:
            d = round_dir_of(self.out, level["round"])
            for name in CHECKPOINT_FILES:
                (d / name).unlink(missing_ok=True)
            for path in (d / AVERAGED_DIR).glob("*.ckpt"):  # checkpoints.average_last's
                path.unlink()
            if level.get("best_checkpoint") is not None:
                level["best_checkpoint"] = None
                write_json(d / "results.json", level)
                changed = True
        return changed
