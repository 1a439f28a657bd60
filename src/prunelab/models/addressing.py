"""Stable names for the parts of a Transformer that the papers talk about.

A component is a sub-layer (`enc.2.sa`, `dec.5.ea`, `dec.0.ff`); a head is `<attention component>.h<j>`
(`dec.5.ea.h3`). Names are module paths, so `model.get_submodule("enc.2.sa")` is the component.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from prunelab.models.transformer import FeedForward, MultiHeadAttention, Transformer

# Wang & Tu (2020) vocabulary for the five component types.
COMPONENT_TYPES = {"enc.sa": "E:SA", "enc.ff": "E:FF", "dec.sa": "D:SA", "dec.ea": "D:EA", "dec.ff": "D:FF"}
_HEAD = re.compile(r"^(?P<comp>(enc|dec)\.\d+\.(sa|ea))\.h(?P<head>\d+)$")
_GROUP = re.compile(r"^(?P<comp>(enc|dec)\.\d+\.(sa|ea))\.g(?P<group>\d+)$")


def component_names(model: Transformer, include_removed: bool = False) -> list[str]:
    """Every sub-layer, encoder first, in forward order; removed ones only with include_removed."""
    names = []
    for side, stack in (("enc", model.enc), ("dec", model.dec)):
        for i, layer in enumerate(stack):
            names += [f"{side}.{i}.{k}" for k in layer.kinds if include_removed or getattr(layer, k) is not None]
    return names


def component_type(name: str) -> str:
    """`dec.3.ea` -> `D:EA`."""
    side, _, kind = name.split(".")[:3]
    return COMPONENT_TYPES[f"{side}.{kind}"]


def attention_names(model: Transformer) -> list[str]:
    return [n for n in component_names(model) if not n.endswith(".ff")]


def head_names(model: Transformer) -> list[str]:
    """Heads still present, by their original numbers (removed heads are gone from the list)."""
    return [f"{a}.h{j}" for a in attention_names(model) for j in component(model, a).head_ids.tolist()]


def group_names(model: Transformer) -> list[str]:
    """K/V groups still present (`dec.0.sa.g1`), for attentions with grouped-query attention only."""
    out = []
    for a in attention_names(model):
        m = component(model, a)
        if m.grouped:  # type: ignore[union-attr]
            out += [f"{a}.g{k}" for k in m.kv_ids.tolist()]  # type: ignore[union-attr]
    return out


def component(model: Transformer, name: str) -> MultiHeadAttention | FeedForward:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, MultiHeadAttention | FeedForward):
        raise KeyError(f"no component named {name!r}; components look like enc.0.sa, dec.1.ea, dec.2.ff")
    return module


def gate(model: Transformer, name: str) -> Tensor:
    """The gate buffer behind `name`: a 0-dim tensor for a component, a 1-element view for a head, the view of its
    query heads' gates for a K/V group (`dec.0.sa.g1`: its heads sit side by side)."""
    g = _GROUP.match(name)
    if g:
        attn = component(model, g["comp"])
        heads = attn.heads_of_groups([int(g["group"])])  # type: ignore[union-attr]
        if not heads:
            raise KeyError(f"{name!r}: no such K/V group in {g['comp']}")
        pos = [int((attn.head_ids == h).nonzero()[0, 0]) for h in heads]
        return attn.head_gate[pos[0] : pos[-1] + 1]
    m = _HEAD.match(name)
    if m:
        attn = component(model, m["comp"])
        where = (attn.head_ids == int(m["head"])).nonzero()
        if len(where) == 0:
            raise KeyError(f"{name!r}: no such head in {m['comp']} (heads left: {attn.head_ids.tolist()})")
        pos = int(where[0, 0])  # after head removal, a head's position differs from its number
        return attn.head_gate[pos : pos + 1]
    return component(model, name).gate


@torch.no_grad()
def set_gate(model: Transformer, name: str, value: float) -> None:
    gate(model, name).fill_(value)


@torch.no_grad()
def reset_gates(model: Transformer) -> None:
    for name in component_names(model):
        mod = component(model, name)
        mod.gate.fill_(1.0)
        if isinstance(mod, MultiHeadAttention):
            mod.head_gate.fill_(1.0)
