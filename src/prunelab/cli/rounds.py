"""The round driver: an outer loop of `trainer.fit` calls, one per pruning round.

Each round gets `checkpoints/round_K/` with `best.ckpt`, `last.ckpt`, its own `results.json` (the level's
figures) and, once finished, `round_end.ckpt` (model + masks + snapshots, with the next round's mask
already set). Re-running over the same folder loads the latest finished round and resumes an unfinished
one from its `last.ckpt`. With `keep_rounds=N` only the N latest finished rounds keep their checkpoint files
(their `results.json` and `test.hyp.txt` stay), so long iterative runs do not fill the disk.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from prunelab.callbacks.curves import record_levels
from prunelab.cli.results import read_state, write_json
from prunelab.errors import NonFiniteError
from prunelab.tasks.translation import TranslationTask

log = logging.getLogger("prunelab")
TrainerFactory = Callable[[Path, int], tuple[L.Trainer, ModelCheckpoint]]  # (round folder, max_steps)
CHECKPOINT_FILES = ("best.ckpt", "last.ckpt", "round_end.ckpt")


def evaluate(trainer: L.Trainer, task: TranslationTask, datamodule: L.LightningDataModule, best: str | None) -> dict:
    """Validate and test the checkpoint `best` (its weights stay loaded in `task`); None: the weights as they are."""
    metrics: dict[str, float] = {}
    for stage in (trainer.validate, trainer.test):
        log.info("%s: %s", stage.__name__, best or "the current weights")
        (scores,) = stage(task, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
        metrics.update({k: float(v) for k, v in scores.items() if not k.endswith("_at_target")})
    return metrics


def round_dir_of(out: Path, r: int) -> Path:
    return out / "checkpoints" / f"round_{r}"


def latest_finished_round(out: Path, rounds: int) -> int:
    """The last round with its `round_end.ckpt` (rounds run in order: every earlier one finished too); -1: none."""
    return max((r for r in range(rounds) if (round_dir_of(out, r) / "round_end.ckpt").exists()), default=-1)


def drop_old_checkpoints(out: Path, levels: list[dict], keep_rounds: int | None) -> bool:
    """Delete the checkpoint files of all but the `keep_rounds` latest finished rounds (None: keep all); their
    levels keep their figures, with `best_checkpoint` null. True when a level changed."""
    if keep_rounds is None:
        return False
    changed = False
    for level in levels[: max(0, len(levels) - keep_rounds)]:
        d = round_dir_of(out, level["round"])
        for name in CHECKPOINT_FILES:
            (d / name).unlink(missing_ok=True)
        if level.get("best_checkpoint") is not None:
            level["best_checkpoint"] = None
            write_json(d / "results.json", level)
            changed = True
    return changed


def run_rounds(
    out: Path,
    task: TranslationTask,
    datamodule: L.LightningDataModule,
    make_trainer: TrainerFactory,
    logger: Any,
    name: str,
    on_level: Callable[[list[dict]], None],
    max_steps: int,
    pretrained: bool = False,
    keep_rounds: int | None = None,
) -> tuple[list[dict], float]:
    """`pretrained`: the model holds trained weights (`ckpt=`), which a pruner may evaluate without training.
    `keep_rounds`: how many of the latest finished rounds keep their checkpoint files (None: all)."""
    pruner, model = task.pruner, task.model
    pruner.use_data(datamodule)
    levels: list[dict] = []
    fit_time = 0.0
    finished = latest_finished_round(out, pruner.rounds)
    for r in range(pruner.rounds):
        round_dir = round_dir_of(out, r)
        done = round_dir / "round_end.ckpt"
        if r <= finished:  # finished earlier: its figures, and the state of the latest such round
            levels.append(json.loads((round_dir / "results.json").read_text()))
            if r == finished:
                saved = read_state(done)
                task.on_load_checkpoint(saved)  # heads removed in that round are removed here too; pruner state
                task.load_state_dict(saved["state_dict"])
                pruner.enter_round(r)
                log.info("rounds 0-%d already finished: loaded %s", r, done)
            continue
        steps = pruner.round_steps(r, max_steps, pretrained)
        trainer, ckpt = make_trainer(round_dir, max(steps, 1))
        last = round_dir / "last.ckpt"
        if last.exists():
            pruner.enter_round(r)  # the checkpoint holds the round's weights and masks
        else:
            pruner.on_round_start(model, r)
        log.info("round %d of %d: sparsity %.4f", r + 1, pruner.rounds, pruner.round_sparsity(r))
        t0 = time.perf_counter()
        if steps > 0:
            try:
                trainer.fit(task, datamodule=datamodule, ckpt_path=last if last.exists() else None, weights_only=True)
            except NonFiniteError as e:  # the round's last good checkpoint stays as it is
                e.round, e.kept = r, str(last.relative_to(out)) if last.exists() else None
                raise
            if trainer.interrupted:
                raise KeyboardInterrupt
            metrics = evaluate(trainer, task, datamodule, ckpt.best_model_path)
            best = ckpt.best_model_path
        else:  # an evaluation-only round: score the weights as they are, and keep them as the round's best
            metrics = evaluate(trainer, task, datamodule, None)
            best = str(round_dir / "best.ckpt")
            trainer.save_checkpoint(best, weights_only=True)
        round_time = time.perf_counter() - t0
        fit_time += round_time
        report = pruner.report(model)
        level = {
            "round": r,
            **({"stage": pruner.stage(r)} if pruner.stage(r) else {}),
            "sparsity": report["sparsity"]["overall"],
            "same_as_targeting": pruner.same_as_targeting(r),  # usable as that target's result in tables
            "metrics": metrics,
            "memory": report["memory"],
            "params": report["params"],
            "best_checkpoint": best,
            "fit_time_s": round_time,
        }
        levels.append(level)
        if trainer.is_global_zero:  # the other DDP processes hold the same figures
            write_json(round_dir / "results.json", level)
            (round_dir / "test.hyp.txt").write_text("\n".join(task.last_eval["test"]["hypotheses"]) + "\n")
            on_level(levels)
            if pruner.rounds > 1:
                record_levels(out, levels, logger, name)
        pruner.on_round_end(model, r)  # the next mask, from the scored (best) weights
        trainer.save_checkpoint(done, weights_only=True)
        if trainer.is_global_zero and drop_old_checkpoints(out, levels, keep_rounds):
            on_level(levels)
    return levels, fit_time
