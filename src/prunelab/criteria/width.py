"""Width importance for structured pruning: one score per feed-forward neuron and per attention head.

Two criteria, both over the real tokens of calibration batches (padding left out):

- `activation` (Minitron, Muralidharan et al. 2024): a neuron's score is the mean |h_i| of its activation (the
  feed-forward hidden state that fc2 reads, after the non-linearity and SwiGLU's product; Minitron's F_neuron is
  the pre-activation X W1_i, which for ReLU/GELU counts negative inputs the next matrix never sees); a head's is the
  mean L2 norm of its output (its hs-wide slice of what the output projection reads). Forward passes only.
- `taylor` (first order, Molchanov et al. 2019; Michel et al. 2019 for heads): E_x |∂L(x)/∂ξ_u|, ξ_u a gate on unit u
  (a neuron's activation, a head's output) at 1, taken per example before the absolute value. For heads this is
  Michel's I_h without the per-layer normalisation (prunelab.criteria.heads.head_importance).

`width_importance` returns {component: (units left,) float tensor}, by slot (the i-th neuron or head still present),
for every feed-forward (`enc.0.ff`) and attention (`dec.1.sa`) component; the model is left as it was found.
`Activation` and `Taylor` are the criterion objects the structured pruner is handed (`pruner.criterion=activation`).
Criteria floor: above models/ and data/, below scoring/ and the structured pruner that calls it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.criteria.base import WidthCriterion
from prunelab.data.batching import batch_real_tokens, decoder_positions
from prunelab.models.addressing import component, component_names
from prunelab.models.transformer import FeedForward, MultiHeadAttention, Transformer

Batch = dict[str, Any]
CRITERIA = ("activation", "taylor")


def real_positions(model: Transformer, batch: Batch, side: str) -> Tensor | None:
    """(B, T) bool of the real tokens a stack sees (`enc` the source, `dec` of an encoder-decoder the positions with a
    target, as the loss counts them: a Marian decoder's first input is its pad id), None: all."""
    if side == "dec" and "tgt_out" in batch:
        return decoder_positions(batch, model.cfg.pad_id)
    return batch_real_tokens(batch, model.cfg.pad_id)


def _units(module: nn.Module) -> tuple[nn.Linear, int, int]:
    """(the Linear that reads the units, units, width of one unit): fc2 reads neurons, out_proj reads heads."""
    if isinstance(module, FeedForward):
        return module.fc2, module.width, 1
    assert isinstance(module, MultiHeadAttention)
    return module.out_proj, module.n_heads, module.head_dim


@contextmanager
def _reading_units(model: Transformer, names: list[str], make: Callable[[str, int, int], Callable]) -> Iterator[None]:
    """Within the block, a forward pre-hook `make(name, units, unit width)` on the Linear that reads each component's
    units (fc2: neurons, out_proj: heads)."""
    handles = []
    for n in names:
        reader, units, width = _units(component(model, n))
        handles.append(reader.register_forward_pre_hook(make(n, units, width)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _zeros(model: Transformer, names: list[str]) -> dict[str, Tensor]:
    return {n: torch.zeros(_units(component(model, n))[1], dtype=torch.float64) for n in names}


@torch.no_grad()
def _activation_scores(model: Transformer, batches: Iterable[Batch], names: list[str]) -> dict[str, Tensor]:
    sums = _zeros(model, names)
    counts = dict.fromkeys(names, 0)
    real: dict[str, Tensor | None] = {}

    def hook(name: str, units: int, width: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]  # (B, T, units * width)
            r = real.get(name.split(".")[0])
            x = x[r] if r is not None and r.shape == x.shape[:2] else x.reshape(-1, x.shape[-1])  # (N, units * width)
            per_unit = x.float().view(x.shape[0], units, width)
            value = per_unit.abs()[..., 0] if width == 1 else per_unit.norm(dim=-1)  # (N, units)
            sums[name] += value.double().sum(0).cpu()
            counts[name] += x.shape[0]

        return record

    with _reading_units(model, names, hook):
        for batch in batches:
            for side in ("enc", "dec"):
                real[side] = real_positions(model, batch, side)
            model.example_losses(batch)
    return {n: (sums[n] / max(1, counts[n])).float() for n in names}


def _taylor_scores(model: Transformer, batches: Iterable[Batch], names: list[str]) -> dict[str, Tensor]:
    totals = _zeros(model, names)
    gates: dict[str, Tensor] = {}
    count = 0

    def hook(name: str, units: int, width: int) -> Callable[..., tuple[Tensor]]:
        def gated(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor]:
            x = args[0]  # (B, T, units * width)
            xi = torch.ones(x.shape[0], 1, units, dtype=x.dtype, device=x.device, requires_grad=True)  # (B, 1, units)
            gates[name] = xi
            return (x * xi.repeat_interleave(width, dim=-1),)

        return gated

    with _reading_units(model, names, hook):
        for batch in batches:
            gates.clear()
            losses = model.example_losses(batch)  # (B,)
            used = [n for n in names if n in gates]
            grads = torch.autograd.grad(losses.sum(), [gates[n] for n in used], allow_unused=True)
            for n, g in zip(used, grads, strict=True):
                if g is not None:  # row b = ∂L(x_b)/∂ξ: per example, then |.|
                    totals[n] += g.detach().double().abs().sum((0, 1)).cpu()
            count += losses.shape[0]
    if count == 0:
        raise ValueError("width_importance needs at least one batch")
    return {n: (t / count).float() for n, t in totals.items()}


def width_importance(
    model: Transformer,
    batches: Iterable[Batch],
    criterion: str = "activation",
    max_batches: int | None = None,
    names: list[str] | None = None,
) -> dict[str, Tensor]:
    """Scores of every neuron and head still present, {component: (units,)} by slot (see the module doc).
    `names`: only these components (default: every feed-forward and attention component)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if names is None:
        names = [n for n in component_names(model) if not getattr(component(model, n), "uniform", False)]
    batches = itertools.islice(batches, max_batches)
    was_training = model.training
    model.eval()  # no dropout: the model as it is used
    try:
        if criterion == "activation":
            return _activation_scores(model, batches, names)
        return _taylor_scores(model, batches, names)
    finally:
        model.train(was_training)


class Activation(WidthCriterion):
    """Minitron's criterion: mean |activation| of a neuron, mean L2 norm of a head's output (forward passes only)."""

    name = "activation"

    def __call__(self, model: nn.Module, batches: Iterable[Batch], names: list[str]) -> dict[str, Tensor]:
        return width_importance(model, batches, "activation", names=names)  # type: ignore[arg-type]


class Taylor(WidthCriterion):
    """First-order Taylor: E_x |∂L(x)/∂ξ_u| of a gate on each unit (Michel et al.'s I_h, unnormalised, for heads)."""

    name = "taylor"

    def __call__(self, model: nn.Module, batches: Iterable[Batch], names: list[str]) -> dict[str, Tensor]:
        return width_importance(model, batches, "taylor", names=names)  # type: ignore[arg-type]


WIDTH_CRITERIA: dict[str, type[WidthCriterion]] = {"activation": Activation, "taylor": Taylor}  # by name
