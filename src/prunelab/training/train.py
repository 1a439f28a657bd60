"""`train(cfg, out)`: one run, top to bottom. Needs no Hydra runtime, so tests and notebooks call it directly;
`python train.py` (cli/train.py) only composes the config, calls it and turns errors into one line."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from prunelab.errors import UserError
from prunelab.training.budget import RunClock
from prunelab.training.build import build_data, build_logger, build_model, model_args, trainer_kwargs, validate
from prunelab.training.fsdp import check_hardware
from prunelab.training.interrupt import Interrupted
from prunelab.training.io import ResultsWriter, is_rank_zero
from prunelab.training.rounds import Rounds, round_dir_of
from prunelab.training.task import build_task
from prunelab.training.weights import start_weights

log = logging.getLogger("prunelab")


def train(
    cfg: DictConfig,
    out: Path,
    choices: dict[str, str] | None = None,
    group: str | None = None,
    job: str | None = None,
) -> dict[str, Any]:
    """Train, prune and test as `cfg` says, in the run folder `out` (a folder holding an unfinished run of the
    same config resumes it). Returns what results.json holds; it is written also when the run fails
    (`status: failed` and the error) or is interrupted (`status: interrupted`), and the error is re-raised.
    `choices`: the config group options, for messages and reports; `group`/`job`: a sweep's W&B group and job."""
    clock = RunClock(out / "run_time.json")  # the run's time, across restarts: trainer.max_time counts it
    choices = dict(choices or {})
    results = ResultsWriter(out / "results.json", config=resolved(cfg), elapsed=clock.elapsed)
    results.update(choices=choices)
    try:
        run(cfg, out, results, choices, group, job, clock)
    except Interrupted as e:
        results.fail(f"interrupted by {e}", status="interrupted")
        results.update(interrupted={"signal": str(e), "step": e.step, "checkpoint": e.checkpoint})
        raise
    except UserError as e:
        results.fail(str(e))
        raise
    except Exception as e:
        results.fail(f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        raise
    finally:
        results.write()
        clock.save(force=True)
    return results.data


def run(
    cfg: DictConfig,
    out: Path,
    results: ResultsWriter,
    choices: dict[str, str],
    group: str | None,
    job: str | None,
    clock: RunClock,
) -> None:
    with user_errors():
        validate(cfg)
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_data(cfg)
        args = model_args(datamodule)
        model = build_model(cfg.model, args, choices, kind=datamodule.kind)
        datamodule.check_model_positions(model.max_positions)
        pruner = instantiate(cfg.pruner)
        task = build_task(cfg, datamodule, model, pruner, choices)
        check_hardware(trainer_kwargs(cfg).get("strategy"), pruner)  # hardware=fsdp: refused before processes start
        start = start_weights(cfg, out, model, pruner)  # scratch, a run's checkpoint, or a pretrained checkpoint
        if pruner.needs_trained_model and not start.trained:
            raise UserError(
                f"pruner={choices.get('pruner', '?')} prunes a trained model: start from a run (ckpt=RUN_DIR) or "
                "an imported checkpoint (model=hf model.path=...)"
            )
        logger = build_logger(cfg, out, group, job)
        if logger:
            logger.log_hyperparams(results.data["config"])
    results.update(score=task.score, model_args=args, init_weights=start.init, start_weights=start.report())
    results.update(data_splits=getattr(datamodule, "split_report", None))

    def on_level(levels: list[dict[str, Any]]) -> None:  # progress survives a kill
        results.update(levels=levels)
        results.write()

    rounds = Rounds(cfg, out, task, datamodule, logger, choices.get("pruner", "run"), on_level, start.trained)
    rounds.run_clock = clock
    levels = rounds.run()

    final = levels[-1]
    hyp = round_dir_of(out, final["round"]) / "test.hyp.txt"
    if is_rank_zero() and hyp.is_file():  # a task that decodes (a language model's test decodes nothing)
        (out / "test.hyp.txt").write_text(hyp.read_text(encoding="utf-8"), encoding="utf-8")
    tokens = task.train_tokens  # real source + target tokens trained on, before a resume too
    # throughput: this process's tokens over its fit time (which includes validation)
    results.update(time=time_shares(levels, clock.elapsed()))
    results.update(
        status="completed",
        metrics=final["metrics"],
        best_checkpoint=final["best_checkpoint"],
        levels=levels,
        train={
            "fit_time_s": rounds.fit_time,
            "tokens": tokens,
            "tokens_per_s": task.process_tokens / rounds.fit_time if rounds.fit_time else None,
        },
        trainer=rounds.trainer_settings,  # what the Trainer ran with (none when every round was loaded)
        **task.pruner.results(model),
        **task.run_report(),
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # every pruning step compared the masks of all processes (pruning.base.check_ranks_agree)
        results.update(ddp={"world_size": torch.distributed.get_world_size(), "mask_checks": task.pruner.rank_checks})


def time_shares(levels: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Where the rounds' wall time went, summed over the levels: training, validation during fit, and the final
    validation + test of each round's best checkpoint, in seconds and as shares of `wall_s` (the rounds' wall time;
    levels loaded from an earlier run count what they took then)."""
    parts = {
        k: sum(level.get("time", {}).get(k, 0.0) for level in levels) for k in ("train_s", "validate_s", "evaluate_s")
    }
    budget = next((level["time"].get("budget_s") for level in levels if level.get("time", {}).get("budget_s")), None)
    return {
        "wall_s": wall_s,
        **parts,
        "shares": {k.removesuffix("_s"): v / wall_s if wall_s > 0 else None for k, v in parts.items()},
        "stopped_by_budget": any(level.get("time", {}).get("stopped_by_budget") for level in levels),
        "first_round_budget_s": budget,
    }


@contextmanager
def user_errors() -> Iterator[None]:
    """Config problems that Hydra or OmegaConf report in their own words become one clear UserError."""
    try:
        yield
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key} must be set (e.g. {e.full_key}=...)") from None
    except InstantiationException as e:  # Hydra wraps errors raised in constructors
        cause = e.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise UserError(f"unknown setting: {cause} (check the pruner./task. keys)") from None
        raise


def resolved(cfg: DictConfig) -> dict[str, Any]:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # a missing mandatory value: keep the config as written, the run reports the error
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
