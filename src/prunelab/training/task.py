"""The run's task, assembled by the trunk: the LightningModule that `task/` names (chosen together with the data),
given its own settings, what it takes from the data, and what the trunk builds for it and hands in: the Recipe
(`task.lr`, `task.optimizer`, `task.warmup_steps`, `task.schedule`, ...: prunelab.tasks.recipe) and, with
`task.distill.teacher`, the Distiller with its teacher (prunelab.tasks.distill). The `task/` keys stay flat, as users
set them; this module splits them into the task's own settings, the recipe's and `distill`.

Training floor, above load.py: a teacher is a finished run that load_run rebuilds (and load.py imports the builders
of build.py, so the task cannot be built there)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prunelab.errors import UserError
from prunelab.hf.checkpoint import resolve_checkpoint
from prunelab.hf.families import load_hf
from prunelab.tasks import distill
from prunelab.tasks.distill import Distiller
from prunelab.tasks.recipe import Recipe
from prunelab.training.load import load_run

RECIPE_KEYS = tuple(f.name for f in fields(Recipe))  # task.lr, task.optimizer, ...: the Recipe's, not the task's
MODEL_HINTS = {"classification": "model=classifier_tiny", "language_modeling": "model=decoder_tiny"}


def split_task_config(node: DictConfig) -> tuple[DictConfig, dict[str, Any], dict[str, Any] | None]:
    """`task/` -> (the task's own settings with its `_target_`, the Recipe's keys, `task.distill`), resolved (a value
    left at ??? is Hydra's MissingMandatoryValue, as when the whole node was instantiated)."""
    given: dict[str, Any] = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)  # type: ignore[assignment]
    recipe = {k: given.pop(k) for k in RECIPE_KEYS if k in given}
    distill_settings = given.pop("distill", None)
    return OmegaConf.create(given), recipe, distill_settings


def build_recipe(settings: Mapping[str, Any]) -> Recipe:
    """The Recipe from the `task/` keys that are its fields; `task.optimizer` is a name (adam, adamw, adafactor) or a
    node with a `_target_` (e.g. {_target_: torch.optim.SGD, momentum: 0.9}), called with the parameters and task.lr.
    A bad value is one UserError."""
    settings = dict(settings)
    optimizer = settings.get("optimizer")
    if isinstance(optimizer, Mapping):
        if "_target_" not in optimizer:
            raise UserError(
                f"task.optimizer must be one of adam, adamw, adafactor or a node with a _target_: {optimizer}"
            )
        settings["optimizer"] = instantiate(optimizer, _partial_=True)
    return Recipe(**settings)


def build_distiller(settings: Mapping[str, Any] | None) -> Distiller | None:
    """`task.distill` -> a Distiller with its teacher loaded (load_run of a run folder or a .ckpt in one; a Hugging Face
    checkpoint folder through its family's import, e.g. the pretrained model a pruned copy recovers from), or None
    when `teacher` is null. Unknown keys and bad values are one UserError each."""
    s = distill.settings(settings)
    if s["teacher"] is None:
        return None
    source = str(s["teacher"])
    folder = Path(source)
    try:
        if not folder.exists():  # a hub id in the Hugging Face cache, or nothing
            if folder.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
                raise UserError("no such run folder or checkpoint")
            folder = resolve_checkpoint(source)
        # a Hugging Face checkpoint folder (config.json, no run of ours): the pretrained model itself
        hf = folder.is_dir() and (folder / "config.json").is_file() and not (folder / "results.json").exists()
        teacher = load_hf(folder).eval() if hf else load_run(folder).model
    except UserError as e:
        raise UserError(f"task.distill.teacher={source}: {e}") from None
    return Distiller(teacher, s["alpha"], s["temperature"], s["hidden_weight"], source)


def build_task(cfg: DictConfig, datamodule: Any, model: Any, pruner: Any, choices: dict[str, str] | None = None) -> Any:
    """The LightningModule named by `task/`, given what it needs from the data, its Recipe and its Distiller; a task
    that does not fit the data, the model or the pruner is one clear error."""
    choices = choices or {}
    own, recipe_settings, distill_settings = split_task_config(cfg.task)
    factory = instantiate(own)
    kind = getattr(factory.func, "kind", None)
    if kind != datamodule.kind:
        raise UserError(
            f"task={choices.get('task', _target(cfg.task))} is a {kind} task but data={choices.get('data', '?')} "
            f"is {datamodule.kind} data (e.g. task={datamodule.kind})"
        )
    if getattr(model, "kind", kind) not in (getattr(factory.func, "model_kinds", None) or (kind,)):
        raise UserError(
            f"model={choices.get('model', '?')} is a {model.kind} model but data={choices.get('data', '?')} "
            f"is {kind} data (e.g. {MODEL_HINTS.get(kind, 'model=transformer_tiny')})"
        )
    if pruner.tasks is not None and kind not in pruner.tasks:  # None: it prunes any task
        raise UserError(
            f"pruner={choices.get('pruner', type(pruner).__name__)} prunes {' or '.join(pruner.tasks)} models, but "
            f"data={choices.get('data', '?')} is {kind} data (e.g. model=classifier_tiny data=synthetic_classification)"
        )
    recipe = build_recipe(recipe_settings)
    try:
        task = factory(model=model, pruner=pruner, recipe=recipe, **datamodule.task_kwargs())
    except TypeError as e:
        raise UserError(f"task: {e}") from None
    # the teacher after the task: loading it builds a model, which draws from torch's generator, and the task's
    # pruner (attached in the task's constructor) draws first, as it always did
    task.use_distiller(build_distiller(distill_settings))
    return task


def _target(node: DictConfig) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]
