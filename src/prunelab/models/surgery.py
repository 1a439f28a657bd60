"""Structural head removal on a whole model, and loading a model whose heads were removed."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from prunelab.models.addressing import attention_names, component
from prunelab.models.transformer import Transformer


def prune_heads(model: Transformer, heads: Mapping[str, list[int]]) -> None:
    """Remove heads for real: {"enc.0.sa": [1, 3], "dec.2.ea": [0]} (original head numbers)."""
    for name, hs in heads.items():
        component(model, name).prune_heads(hs)  # type: ignore[union-attr]


def remaining_heads(model: Transformer) -> dict[str, list[int]]:
    return {n: component(model, n).head_ids.tolist() for n in attention_names(model)}  # type: ignore[union-attr]


def match_heads(model: Transformer, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Remove from `model` the heads that a state dict saved after head removal no longer has (its
    `<component>.head_ids` buffers say which are left), so that the state dict fits the model's shapes."""
    gone = {}
    for name in attention_names(model):
        key = f"{prefix}{name}.head_ids"
        if key in state:
            left = set(state[key].tolist())
            gone[name] = [h for h in component(model, name).head_ids.tolist() if h not in left]  # type: ignore[union-attr]
    prune_heads(model, gone)


def load_state_dict_with_heads(model: Transformer, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Load a state dict saved after head removal: first remove the heads its `head_ids` say are gone."""
    match_heads(model, state, prefix)
    model.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
