"""Structural removal of heads, feed-forward neurons and whole components, loading a model that had any of them
removed, and the original number of each stack layer (layer_numbers)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from prunelab.models.addressing import attention_names, component, component_names
from prunelab.models.transformer import FeedForward, Transformer


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


def prune_neurons(model: Transformer, neurons: Mapping[str, list[int]]) -> None:
    """Remove feed-forward neurons for real: {"enc.0.ff": [5, 17]} (original neuron numbers)."""
    for name, ns in neurons.items():
        ff = component(model, name)
        if not isinstance(ff, FeedForward):
            raise KeyError(f"{name!r} is not a feed-forward component")
        ff.prune_neurons(ns)


def feed_forward_names(model: Transformer) -> list[str]:
    return [n for n in component_names(model) if n.endswith(".ff")]


def remaining_neurons(model: Transformer) -> dict[str, list[int]]:
    return {n: component(model, n).neuron_numbers() for n in feed_forward_names(model)}  # type: ignore[union-attr]


def match_neurons(model: Transformer, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Remove from `model` the feed-forward neurons that a state dict saved after neuron removal no longer has (its
    `<component>.neuron_ids` buffers say which are left)."""
    gone = {}
    for name in feed_forward_names(model):
        key = f"{prefix}{name}.neuron_ids"
        if key in state:
            left = set(state[key].tolist())
            gone[name] = [n for n in component(model, name).neuron_numbers() if n not in left]  # type: ignore[union-attr]
    prune_neurons(model, gone)


def remove_components(model: Transformer, names: list[str]) -> None:
    """Remove sub-layers for real (`enc.0.ff`, `dec.1.sa`): no parameters, nothing added to the residual."""
    for name in names:
        component(model, name)  # a clear KeyError for a name that is not a component (or already gone)
        side, i, kind = name.split(".")
        (model.enc if side == "enc" else model.dec)[int(i)].remove(kind)


def restore_components(model: Transformer, names: list[str]) -> None:
    """Build removed sub-layers again, freshly initialised (their weights are meant to be loaded or reset)."""
    for name in names:
        side, i, kind = name.split(".")
        (model.enc if side == "enc" else model.dec)[int(i)].restore(kind)


def match_components(model: Transformer, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Give `model` exactly the components a state dict has: remove those it holds nothing of (saved after
    removing them) and rebuild those it has but the model lacks."""
    present = {k.removeprefix(prefix).rsplit(".", 1)[0] for k in state if k.startswith(prefix)}
    if not present:
        return  # nothing of this model in `state`: leave it whole (loading will say what is wrong)

    def has(n: str) -> bool:
        return any(p == n or p.startswith(n + ".") for p in present)

    everything = component_names(model, include_removed=True)
    restore_components(model, [n for n in everything if has(n) and n not in component_names(model)])
    remove_components(model, [n for n in component_names(model) if not has(n)])


def make_uniform(model: Transformer, names: list[str]) -> None:
    """Prune attention maps structurally (AttendOut): constant 1/n attention, no Q or K projections."""
    for name in names:
        attn = component(model, name)
        if not hasattr(attn, "make_uniform"):
            raise KeyError(f"{name!r} is not an attention component")
        attn.make_uniform()  # type: ignore[operator]


def match_structure(model: Transformer, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Make `model` have the components, heads, feed-forward neurons and uniform attention maps that `state` has, so
    that it loads."""
    match_components(model, state, prefix)
    match_heads(model, state, prefix)
    match_neurons(model, state, prefix)
    uniform = [
        n
        for n in attention_names(model)
        if f"{prefix}{n}.v_proj.weight" in state and f"{prefix}{n}.q_proj.weight" not in state
    ]
    make_uniform(model, [n for n in uniform if not component(model, n).uniform])  # type: ignore[union-attr]


def load_state_dict_with_heads(model: Transformer, state: Mapping[str, Tensor], prefix: str = "") -> None:
    """Load a state dict saved after head or component removal: remove the same parts first."""
    match_structure(model, state, prefix)
    model.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})


STACKS = ("enc", "dec")  # the layer stacks: encoder, decoder (a classifier has only enc, a causal LM only dec)


def layer_numbers(model: nn.Module) -> dict[str, list[int]]:
    """The original number of every layer of each stack ({"enc": [...], "dec": [...]}, one per layer, removed or
    not): its index, since removing a layer within prunelab empties it in place and never renumbers the stack, except
    for a model imported from a Hugging Face export that took whole layers out and renumbered the rest, whose config
    records the kept layers' original numbers (`cfg.layer_numbers`, read from config.json's prunelab_kept_layers)."""
    recorded = recorded_layer_numbers(model)
    return {side: list(recorded.get(side, range(len(getattr(model, side, None) or ())))) for side in STACKS}


def recorded_layer_numbers(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The stacks whose original layer numbers the model's config records (see layer_numbers); {} for none."""
    return dict(getattr(getattr(model, "cfg", None), "layer_numbers", None) or {})
