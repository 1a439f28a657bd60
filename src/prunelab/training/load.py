"""One way to rebuild a run's model: `load_run(run folder or .ckpt)`.

The model is built by the same builders as in training (`model/` config + the data's arguments, which the run
recorded in results.json as `model_args`), then given the structure its checkpoint has (removed heads,
removed components, AttendOut's uniform attention maps) and its weights. `ckpt=`, `prunelab heads`,
`prunelab components` and `prunelab export` all go through here.

A run stands alone: a model imported from Hugging Face is rebuilt from the run's copy of its source folder
(`<run>/hf_source`: config.json, generation_config.json and the tokenizer files, no weights, written at train time
by `record_source`), never from the source itself, which may be gone or on another machine. Its weights are the
checkpoint's; the data's tokenizer is read from that copy too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from prunelab.data.base import MOVED_TARGETS
from prunelab.errors import UserError
from prunelab.hf.checkpoint import copy_source_files
from prunelab.models.surgery import load_state_dict_with_heads
from prunelab.training.build import build_data, build_model, model_args
from prunelab.training.io import MODEL_PREFIX, is_rank_zero, read_completed_run, read_state

log = logging.getLogger("prunelab")
HF_SOURCE = "hf_source"  # a run's copy of its imported model's source folder, without the weights


@dataclass
class LoadedRun:
    dir: Path  # the run folder
    results: dict[str, Any]  # its results.json
    config: DictConfig  # the run's resolved config
    checkpoint: Path  # the checkpoint the weights came from
    state: dict[str, Tensor]  # the checkpoint's whole state_dict (model, masks, pruner snapshots)
    model: nn.Module  # eval mode
    datamodule: Any | None  # set up, when asked for (or when an older run did not record model_args)
    task_class: type  # the run's LightningModule class (it says how the run is scored: `scorer`)


def load_run(path: Path, data: bool = False) -> LoadedRun:
    """A completed run folder (its tested checkpoint) or any .ckpt inside a run folder -> the rebuilt model.
    `data`: also set up the run's data module (the analyses score on it)."""
    path = Path(path)
    if path.is_dir():
        results = read_completed_run(path)
        run_dir, ckpt = path, Path(results["best_checkpoint"])
    elif path.is_file():
        # the run folder: the nearest results.json above with the run's config (a round's folder has its own
        # results.json, without it)
        run_dir = next((d for d in path.parents if "config" in _results_or_empty(d)), None)  # type: ignore[assignment]
        if run_dir is None:
            raise UserError(f"{path}: not inside a prunelab run folder (no results.json with a config above it)")
        results, ckpt = _results_or_empty(run_dir), path
    else:
        raise UserError(f"{path}: no such run folder or checkpoint")
    cfg = OmegaConf.create(results["config"])
    if (target := OmegaConf.select(cfg, "data._target_", default=None)) in MOVED_TARGETS:
        cfg.data._target_ = MOVED_TARGETS[target]  # a run recorded before data/ was laid out by task kind
    standalone = (run_dir / HF_SOURCE / "config.json").is_file()
    if standalone:
        cfg = from_recorded_source(cfg, run_dir / HF_SOURCE)
    with _user_errors():
        datamodule = build_data(cfg) if data or "model_args" not in results else None
        args = results.get("model_args") or model_args(datamodule)
        # an imported model is built from config.json alone: the checkpoint has its weights
        model = build_model(cfg.model, {**args, "weights": False} if standalone else args)
    state = checkpoint_state(ckpt)
    load_model_state(model, state, ckpt)
    return LoadedRun(run_dir, results, cfg, ckpt, state, model.eval(), datamodule, task_class(cfg))


@contextmanager
def _user_errors() -> Iterator[None]:
    """A UserError raised in a constructor that Hydra instantiates (e.g. the data's folder is gone) stays one line."""
    try:
        yield
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


def record_source(model: nn.Module, out: Path) -> Path | None:
    """At train time: a model imported from Hugging Face (`pretrained_from`, its folder or hub id) gets its source's
    config, generation config and tokenizer files copied to `out/hf_source`, so that `load_run`, the analyses and
    `prunelab export --format hf` rebuild it without the source. Returns that folder (None for other models)."""
    source = getattr(model, "pretrained_from", None)
    if source is None:
        return None
    if is_rank_zero():
        copy_source_files(source, out / HF_SOURCE)
    return out / HF_SOURCE


def from_recorded_source(cfg: DictConfig, folder: Path) -> DictConfig:
    """The run's config (changed in place) with `model.path`, and `data.tokenizer` where it read the same
    checkpoint, on the run's copy of its source folder, `folder`."""
    source = OmegaConf.select(cfg, "model.path", default=None)
    if source is None:  # hf_source without model.path: a config this code did not write
        raise UserError(f"{folder.parent}: the run has {HF_SOURCE}/ but its config has no model.path")
    cfg.model.path = str(folder)
    if OmegaConf.select(cfg, "data.tokenizer", default=None) == source:
        cfg.data.tokenizer = str(folder)
    return cfg


def _results_or_empty(folder: Path) -> dict[str, Any]:
    f = folder / "results.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError:
        return {}


def task_class(cfg: DictConfig) -> type:
    """The run's task class from its `task._target_`; runs recorded before the task group named no target and
    were translation runs unless their model was a classifier."""
    target = OmegaConf.select(cfg, "task._target_", default=None)
    if target is None:
        legacy = "classifier" in str(OmegaConf.select(cfg, "model._target_", default=""))
        target = "prunelab.tasks.ClassificationTask" if legacy else "prunelab.tasks.TranslationTask"
    return get_class(target)


def checkpoint_state(path: Path, label: str = "") -> dict[str, Tensor]:
    """The state_dict of a prunelab checkpoint (loaded with weights_only=True), or one clear error."""
    try:
        return read_state(path)["state_dict"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{label}{path}: not a prunelab checkpoint ({type(e).__name__}: {e})") from None


def load_model_state(model: nn.Module, state: Mapping[str, Tensor], path: Path, label: str = "") -> None:
    """The model part of a checkpoint's state into `model`, removing first the heads/components it lacks."""
    try:
        load_state_dict_with_heads(model, state, MODEL_PREFIX)
    except (RuntimeError, KeyError) as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise UserError(
            f"{label}{path} does not fit this model (another model shape or vocabulary?): {first.strip()}"
        ) from None


def load_trained_weights(model: nn.Module, path: Path) -> Path:
    """`ckpt=PATH`: start from the model weights of a trained run (its folder, or any .ckpt it wrote).
    Only the model is taken (heads removed in it stay removed); masks and optimizer state are not."""
    if path.is_dir():
        results = path / "results.json"
        if not results.exists():
            raise UserError(f"ckpt={path}: a folder must be a run folder with results.json")
        best = json.loads(results.read_text()).get("best_checkpoint")
        if not best:
            raise UserError(f"ckpt={path}: the run has no tested checkpoint (status not completed?)")
        path = Path(best)
    if not path.is_file():
        raise UserError(f"ckpt={path}: no such file")
    load_model_state(model, checkpoint_state(path, "ckpt="), path, "ckpt=")
    log.info("started from the weights of %s", path)
    return path
