"""Which experiment logger a run uses, decided by class, never by class name: a subclass of Lightning's
WandbLogger counts as W&B, a class that merely happens to be called "WandbLogger" does not.

Lightning (and Hydra) are imported only when asked, so summaries and other tools stay quick to start.
"""

from __future__ import annotations

from typing import Any


def _wandb_logger_class() -> type | None:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning is a dependency; this only keeps callers safe
        return None
    return WandbLogger


def wandb_run(logger: Any) -> Any | None:
    """The W&B run behind `logger` (its `experiment`) when it is a Lightning WandbLogger, else None.
    Accepts anything a Trainer holds as a logger, including False/None for "no logger"."""
    cls = _wandb_logger_class()
    if not logger or cls is None or not isinstance(logger, cls):
        return None
    return logger.experiment


def is_wandb_config(logger_cfg: Any) -> bool:
    """Whether a logger config (a DictConfig, or a plain dict read from results.json) instantiates a
    Lightning WandbLogger: its `_target_` resolves to that class or a subclass. Missing or unimportable
    targets are not W&B."""
    target = logger_cfg.get("_target_") if logger_cfg is not None and hasattr(logger_cfg, "get") else None
    cls = _wandb_logger_class()
    if not target or cls is None:
        return False
    from hydra.utils import get_class

    try:
        found = get_class(str(target))
    except Exception:  # ImportError, or a target that is not a class: not a W&B logger
        return False
    return isinstance(found, type) and issubclass(found, cls)
