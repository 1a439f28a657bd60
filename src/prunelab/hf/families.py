"""The registry of checkpoint families: config.json's `model_type` -> the module that reads and writes it (each
satisfies prunelab.hf.family.Family), and the one Hydra entry that picks it, `model=hf model.path=DIR`."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from prunelab.errors import UserError
from prunelab.hf import bart, causal_lm, encoders, gemma, gpt_neox, m2m100, marian, opt, phi, t5
from prunelab.hf.checkpoint import resolve_checkpoint
from prunelab.models.transformer import Transformer

MODULES: tuple[ModuleType, ...] = (encoders, marian, t5, bart, m2m100, causal_lm, opt, gpt_neox, phi, gemma)
FAMILIES: dict[str, ModuleType] = {t: module for module in MODULES for t in module.MODEL_TYPES}


def family_of(hf: dict[str, Any], source: str | Path) -> ModuleType:
    """The family module of config.json `hf` (read from `source`), or one error naming the model types there are."""
    kind = hf.get("model_type")
    if kind not in FAMILIES:
        raise UserError(
            f"{source}: model_type {kind!r} is not a family prunelab imports (supported: {', '.join(sorted(FAMILIES))})"
        )
    return FAMILIES[kind]


def read_model_type(path: str | Path) -> tuple[dict[str, Any], ModuleType]:
    """(config.json, its family module) of a checkpoint folder or cached hub id."""
    config = resolve_checkpoint(path) / "config.json"
    if not config.is_file():
        raise UserError(f"model.path={path}: not a Hugging Face model folder (no config.json)")
    try:
        hf = json.loads(config.read_text())
    except ValueError as e:
        raise UserError(f"{config}: cannot be read as JSON ({e})") from None
    return hf, family_of(hf, path)


def build_hf(path: str, weights: bool = True, **data_args: Any) -> Transformer:
    """Hydra entry point (`model=hf model.path=DIR`): the family named by the folder's config.json builds the model
    for the data (`data_args`: vocab_size, pad_id, and num_classes for classification data; plus training
    overrides such as dropout). A family that does not serve the data's kind fails in build_model with the kind."""
    _, family = read_model_type(path)
    return family.build(path=path, weights=weights, **data_args)


def load_hf(path: str | Path, weights: bool = True, **overrides: Any) -> Transformer:
    """Any supported checkpoint folder -> its prunelab network (the family's `load`)."""
    _, family = read_model_type(path)
    return family.load(path, weights, **overrides)
