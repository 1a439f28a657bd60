"""Builders: what `train(cfg)` and `load_run` construct from a config.

A run is data -> model -> pruner -> task -> logger -> a Trainer per round. The data module names its task kind
(translation, classification or language_modeling); the task config group (`task=`) is chosen together with the
data (each data config selects its task). The task itself is built by prunelab.training.task.build_task, above
load.py: a task that distils needs a teacher, which load_run rebuilds with the builders here.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from prunelab.callbacks.importance import ComponentImportanceTracker
from prunelab.config import HARDWARE_KEYS, TRAINER_FIXED
from prunelab.data.splits import split_check
from prunelab.errors import UserError
from prunelab.loggers import is_wandb_config
from prunelab.training.averaging import ValidationSnapshots
from prunelab.training.budget import PatienceStop, StageClock, seconds
from prunelab.training.io import is_rank_zero

log = logging.getLogger("prunelab")

# Trainer arguments prunelab fills in itself, with where the user sets them instead.
TRAINER_OWNED = {
    "logger": "the logger group (logger=wandb|csv|none)",
    "callbacks": "prunelab's own callbacks (checkpoints per round)",
    "default_root_dir": "hydra.run.dir",
    "enable_checkpointing": "prunelab's checkpoints (checkpoints.keep_rounds)",
}


def validate(cfg: DictConfig) -> None:
    """Settings that would otherwise fail late or silently: one clear error each."""
    s = cfg.sparsity
    if not isinstance(s, int | float) or not 0.0 <= float(s) < 1.0:
        raise UserError(f"sparsity must be in [0, 1), got {s}")
    if cfg.trainer.max_steps is None or cfg.trainer.max_steps < 0:
        raise UserError(
            f"trainer.max_steps must be a number of steps >= 0 (0: score without training), got {cfg.trainer.max_steps}"
        )
    seconds(cfg.trainer.get("max_time"))  # a budget prunelab cannot read is an error now, not after training
    patience = (cfg.get("early_stopping") or {}).get("patience")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise UserError(f"early_stopping.patience must be null (off) or a number of validations >= 1, got {patience}")
    average = cfg.get("checkpoints", {}).get("average_last")
    if average is not None and (not isinstance(average, int) or average < 2):
        raise UserError(f"checkpoints.average_last must be null (off) or a number of checkpoints >= 2, got {average}")
    keep = cfg.get("checkpoints", {}).get("keep_rounds")
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise UserError(f"checkpoints.keep_rounds must be null (keep all) or a number >= 1, got {keep}")
    if cfg.get("deterministic", False) not in (True, False, "warn"):
        raise UserError(f"deterministic must be true, false or warn, got {cfg.deterministic!r}")
    accepted = set(inspect.signature(L.Trainer.__init__).parameters)
    unknown = sorted(set(cfg.trainer) - accepted)
    if unknown:
        raise UserError(f"trainer.{unknown[0]} is not a lightning.Trainer argument")
    for key, where in TRAINER_OWNED.items():
        if cfg.trainer.get(key) is not None:
            raise UserError(f"trainer.{key} is set by prunelab; use {where}")
    for key, value in TRAINER_FIXED.items():
        if cfg.trainer.get(key) not in (None, value):
            raise UserError(f"trainer.{key} must stay {value} (prunelab's batch samplers shard the data themselves)")
    if float(s) > 0 and OmegaConf.select(cfg, "pruner.sparsity", default=None) is None:
        log.warning("%s does not read sparsity=%s: it has no effect (pick e.g. pruner=mp)", _target(cfg.pruner), s)


def _target(node: DictConfig) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def build_data(cfg: DictConfig) -> Any:
    """The data module, prepared (e.g. the subword model trained once) and set up: data is read and checked
    before anything trains."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.split_report = split_check(datamodule.examples)  # results.json: data_splits
    for warning in datamodule.split_report["warnings"]:
        if is_rank_zero():
            log.warning("data: %s", warning)
    return datamodule


def model_args(datamodule: Any) -> dict[str, Any]:
    """What the model takes from the data: vocabulary size, padding id (and classes for a classifier)."""
    tok = datamodule.tokenizer
    return {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, **datamodule.model_kwargs()}


def build_model(
    model_cfg: DictConfig, args: dict[str, Any], choices: dict[str, str] | None = None, kind: str | None = None
) -> Any:
    """The network from `model/` and the data's arguments; a model of another kind is one clear error naming the
    data's `kind` (the data module's: translation, classification or language_modeling)."""
    choices = choices or {}
    try:
        return instantiate(model_cfg)(**args)
    except TypeError as e:
        kind = kind or ("classification" if "num_classes" in args else "translation")
        hint = {"classification": "model=classifier_tiny", "language_modeling": "model=decoder_tiny"}.get(
            kind, "model=transformer_tiny"
        )
        raise UserError(
            f"model={choices.get('model', _target(model_cfg))} cannot be built for {kind} data "
            f"(data={choices.get('data', '?')}; e.g. {hint}): {e}"
        ) from None


def wandb_online_problem(timeout: float = 3.0) -> str | None:
    """Why an online W&B run cannot start from here, or None: no API key (WANDB_API_KEY or the netrc file
    `wandb login` writes), or the server (WANDB_BASE_URL) does not answer within `timeout` seconds."""
    import netrc
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
        try:
            found = netrc.netrc(path).authenticators(host) if path.is_file() else None
        except (OSError, netrc.NetrcParseError):
            found = None
        if not found or not found[2]:
            return f"no API key (set WANDB_API_KEY or run `wandb login`; none for {host} in {path})"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or type(e).__name__})"
    return None


def build_logger(cfg: DictConfig, out: Path, group: str | None = None, name: str | None = None) -> Any:
    """The experiment logger (False for logger=none). W&B: offline unless asked, and a missing network or key
    falls back to offline with one warning; the jobs of a sweep form one W&B group."""
    if "_target_" not in cfg.logger:
        return False
    extra: dict[str, Any] = {}
    if is_wandb_config(cfg.logger):
        if cfg.logger.get("mode") == "online" and (problem := wandb_online_problem()):
            if is_rank_zero():
                log.warning(
                    "W&B: %s; logging offline instead (upload later: wandb sync %s)",
                    problem,
                    out / "wandb" / "offline-run-*",
                )
            extra["mode"] = "offline"  # a missing network never fails a run
        if group and not cfg.logger.get("group"):
            extra.update(group=group, name=name)
    return instantiate(cfg.logger, save_dir=str(out), **extra)  # logs live in the run folder


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Trainer arguments: every `trainer.X` (Lightning's defaults unless set), the hardware preset's accelerator,
    devices, strategy, precision and nodes unless `trainer.X` sets them, and `deterministic`."""
    given = OmegaConf.to_container(cfg.trainer, resolve=True)
    hardware = OmegaConf.to_container(cfg.hardware, resolve=True)
    # max_time is prunelab's own budget (training.budget.StageClock: per round, leaving time for the test)
    kwargs = {k: v for k, v in given.items() if k not in TRAINER_OWNED and k not in HARDWARE_KEYS and k != "max_time"}
    kwargs.update({k: given.get(k) if given.get(k) is not None else hardware.get(k) for k in HARDWARE_KEYS})
    if kwargs.get("deterministic") is None:
        kwargs["deterministic"] = cfg.get("deterministic", False)
    if isinstance(kwargs.get("strategy"), dict) and "_target_" in kwargs["strategy"]:
        kwargs["strategy"] = instantiate(kwargs["strategy"])  # a strategy built in code (hardware=fsdp's FSDP2)
    return {k: v for k, v in kwargs.items() if not (k in HARDWARE_KEYS and v is None)}


AVERAGED_DIR = "average"  # a round's folder for the checkpoints averaged with checkpoints.average_last


def build_trainer(
    cfg: DictConfig,
    round_dir: Path,
    logger: Any,
    max_steps: int,
    monitor: str,
    budget_s: float | None = None,
    eval_factor: float = 1.0,
) -> tuple[L.Trainer, ModelCheckpoint, StageClock]:
    """The Trainer of one round: its own checkpoint folder (best by `monitor`, and last), `max_steps` steps, its
    clock (with the round's time budget `budget_s`, see training.budget) and, with `early_stopping.patience`, a stop
    after that many validations without a better score."""
    ckpt = ModelCheckpoint(
        dirpath=round_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    kwargs = trainer_kwargs(cfg)
    kwargs["max_steps"] = max_steps
    # validation every N optimizer steps: Lightning counts batches, k per step under gradient accumulation
    every = min(kwargs.get("val_check_interval") or max_steps, max_steps)
    kwargs["val_check_interval"] = every * int(kwargs.get("accumulate_grad_batches") or 1) if every >= 1 else every
    clock = StageClock(budget_s, eval_factor)
    callbacks: list[L.Callback] = [ckpt, clock]
    average = (cfg.get("checkpoints") or {}).get("average_last")
    if average:  # final-mask validation checkpoints, for rounds.Rounds to average (fairseq's recipe)
        callbacks.append(ValidationSnapshots(round_dir / AVERAGED_DIR, monitor, int(average)))
    patience = (cfg.get("early_stopping") or {}).get("patience")
    if patience is not None:
        callbacks.append(PatienceStop(monitor, int(patience), float(cfg.early_stopping.get("min_delta", 0.0))))
    track = cfg.get("track_importance") or {}
    if track.get("every_n_epochs", 0) > 0:  # Wang & Tu Figure 8: contribution heatmaps during training
        callbacks.append(
            ComponentImportanceTracker(
                round_dir.parent.parent / "importance" / round_dir.name,
                every_n_epochs=track.every_n_epochs,
                max_batches=track.get("max_batches"),
                beam_size=track.get("beam_size", 1),
            )
        )
    trainer = L.Trainer(**kwargs, callbacks=callbacks, logger=logger, default_root_dir=round_dir.parent.parent)
    return trainer, ckpt, clock
