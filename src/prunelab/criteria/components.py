"""Component importance of Wang & Tu (2020), as pure functions of a model and batches.

Components are the sub-layers `enc.{i}.sa`, `enc.{i}.ff`, `dec.{i}.sa`, `dec.{i}.ea`, `dec.{i}.ff`.

- Contribution (Eq. 1): M_n = BLEU drop when component n's output is replaced by zeros (its gate at 0),
  clipped to [0, C] with C = 10% of the baseline BLEU, divided by the largest clipped drop.
- Criticality (Eq. 2): the smallest α in [0, 1] such that BLEU(θ_f) - BLEU(θ_f with component n at
  (1-α)θ_0 + αθ_f) < ε.

- Block influence (Men et al. 2024, ShortGPT): BI = 1 - E_t cos(x_t before, x_t after) of the residual stream
  around a component, or around a whole layer: how much the block changes the hidden states it passes on. It is
  what decoder-only depth pruning ranks layers by (no score is decoded: one forward pass over the batches).

`BlockInfluence` and `Contribution` are the criterion objects the component and depth pruners are handed
(`pruner.criterion=block_influence|contribution`): contribution is given the task's scorer, block influence batches.

For a classifier (encoder components only) the score is accuracy in percent where NMT uses BLEU, as in
Michel et al.'s BERT experiments; the scorer (prunelab.scoring.scoring) decides. The ablations themselves are decoded
side by side (prunelab.scoring.variants), and so is the group ablation (scoring.group_ablation).

Criteria floor: pure functions of a model and batches or of score callables, below scoring/.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prunelab.criteria.ablation import gates_off
from prunelab.criteria.base import BlockCriterion, BlockScores
from prunelab.criteria.width import real_positions
from prunelab.errors import UserError
from prunelab.models.addressing import component, component_names
from prunelab.models.transformer import Transformer

Batch = dict[str, Any]


def contribution_scores(drops: dict[str, float], baseline: float, clip_fraction: float = 0.1) -> dict[str, float]:
    """Eq. 1: clip each BLEU drop to [0, C], C = clip_fraction x baseline BLEU, then divide by the largest
    clipped drop (all zeros when no component costs anything)."""
    cap = clip_fraction * abs(baseline)  # a negated perplexity: 10% of the perplexity
    clipped = {c: min(max(d, 0.0), cap) for c, d in drops.items()}
    top = max(clipped.values(), default=0.0)
    return {c: (v / top if top > 0 else 0.0) for c, v in clipped.items()}


def removal_ranking(
    drops: dict[str, float], stopped: Iterable[str] = (), layers: bool = False
) -> tuple[dict[str, float], set[str]]:
    """What a pruner removes by: each component's unclipped drop, summed over each layer's sub-layers (`dec.3`) with
    `layers`. Eq. 1's clip at C ties every component that costs more than C at 1 (in a decoder LM most do), so
    ranking by the clipped scores breaks those ties by name and can remove the most critical layer; the clipped,
    normalised scores stay what the Wang & Tu reports show. Drops are exact for perplexity and accuracy; a BLEU
    ablation stopped early (`stopped`: at the clip) has only a lower bound >= C, so a unit holding one may cost more
    than its rank says. -> ({unit: drop}, the units whose drop is such a lower bound)."""
    return summed(drops, layers), {n.rsplit(".", 1)[0] if layers else n for n in stopped}


def summed(scores: dict[str, float], layers: bool) -> dict[str, float]:
    """Per-component scores as they are, or with `layers` summed per layer (`dec.3.ff` -> `dec.3`)."""
    if not layers:
        return dict(scores)
    out: dict[str, float] = {}
    for n, v in scores.items():
        out[n.rsplit(".", 1)[0]] = out.get(n.rsplit(".", 1)[0], 0.0) + v
    return out


components_off = gates_off  # the component studies' name for it


# --- criticality (Eq. 2) ------------------------------------------------------------------------------
@dataclass
class Criticality:
    alpha: float  # the smallest α found meeting the condition (within `tolerance`)
    evaluations: int
    tolerance: float
    trace: list[tuple[float, float]]  # (α, BLEU drop) in the order evaluated


def smallest_alpha(
    drop_at: Callable[[float], float], epsilon: float = 0.5, grid: int = 4, tolerance: float = 0.02
) -> Criticality:
    """The smallest α in [0, 1] with drop_at(α) < epsilon: first a coarse grid (α = 0, 1/grid, ..., 1), then
    bisection between the first grid point that meets the condition and the one before it, down to
    `tolerance`. α = 1 is θ_f itself (no drop) and is taken as meeting it without an evaluation."""
    trace: list[tuple[float, float]] = []

    def ok(a: float) -> bool:
        if a >= 1.0:
            return True
        d = drop_at(a)
        trace.append((a, d))
        return d < epsilon

    points = [k / grid for k in range(grid + 1)]
    hi_idx = next(k for k, a in enumerate(points) if ok(a))
    if hi_idx == 0:
        return Criticality(0.0, len(trace), tolerance, trace)
    lo, hi = points[hi_idx - 1], points[hi_idx]
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return Criticality(hi, len(trace), tolerance, trace)


def smallest_alpha_evaluations(grid: int = 4, tolerance: float = 0.02) -> int:
    """The most evaluations `smallest_alpha` makes: the grid points below α = 1, then the bisection of one
    grid interval down to `tolerance`."""
    width, halvings = 1 / grid, 0
    while width > tolerance:
        width /= 2
        halvings += 1
    return grid + halvings


@contextmanager
def interpolated(model: Transformer, name: str, theta0: dict[str, Tensor], alpha: float) -> Iterator[None]:
    """Component `name` at (1-α)θ_0 + αθ_f for the duration of the block (θ_f: its current weights)."""
    params = dict(component(model, name).named_parameters())
    saved = {k: p.detach().clone() for k, p in params.items()}
    try:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_((1 - alpha) * theta0[f"{name}.{k}"].to(p) + alpha * saved[k])
        yield
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])


def criticality_scores(
    model: Transformer,
    theta0: dict[str, Tensor],
    evaluate: Callable[[], float],
    names: Sequence[str] | None = None,
    epsilon: float = 0.5,
    grid: int = 4,
    tolerance: float = 0.02,
    progress: Callable[[str], None] | None = None,
) -> tuple[float, dict[str, Criticality]]:
    """Eq. 2 for every component: -> (BLEU of θ_f, {component: Criticality})."""
    names = list(names if names is not None else component_names(model))
    base = evaluate()
    out = {}
    for n in names:

        def drop_at(a: float, n: str = n) -> float:
            with interpolated(model, n, theta0, a):
                return base - evaluate()

        out[n] = smallest_alpha(drop_at, epsilon, grid, tolerance)
        if progress:
            progress(n)
    return base, out


# --- block influence (Men et al. 2024) -------------------------------------------------------------------------
def require_pre_norm(model: Any) -> None:
    """Block influence reads a pre-norm residual stream: one clear error for any other model, as soon as a pruner
    that will score by it is attached (before any evaluation or training), and again when it scores."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and not getattr(cfg, "pre_norm", True):
        raise UserError(
            "block influence needs a pre-norm model (post-norm normalises the stream inside each block): "
            "use pruner.criterion=contribution"
        )


@torch.no_grad()
def block_influence(model: Transformer, batches: Sequence[Batch], layers: bool = False) -> dict[str, float]:
    """1 - mean cosine similarity between the residual stream before and after each component (`dec.3.ff`), or each
    layer (`dec.3`) with `layers`, over the real tokens of `batches` (padding left out). Pre-norm models only: there
    the stream before a sub-layer is the input of its norm and the stream after is that plus the sub-layer's output."""
    require_pre_norm(model)
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    real: dict[str, Tensor | None] = {}  # per stack: its real tokens (the decoder's: the positions with a target)
    inputs: dict[str, Tensor] = {}
    handles = []

    def add(name: str, before: Tensor, after: Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(before.float(), after.float(), dim=-1)  # (B, T)
        r = real.get(name.split(".")[0])
        if r is not None and r.shape == cos.shape:
            cos = cos[r]
        sums[name] = sums.get(name, 0.0) + float(cos.double().sum())
        counts[name] = counts.get(name, 0) + cos.numel()

    if layers:
        for side in ("enc", "dec"):
            for i, layer in enumerate(getattr(model, side)):
                n = f"{side}.{i}"
                handles.append(layer.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0])))
                handles.append(layer.register_forward_hook(lambda m, a, out, n=n: add(n, inputs.pop(n), out)))
    else:
        for n in component_names(model):
            side, i, kind = n.split(".")
            layer = getattr(model, side)[int(i)]
            norm = layer.norm_of(kind)
            handles.append(norm.register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0])))
            handles.append(
                component(model, n).register_forward_hook(lambda m, a, y, n=n: add(n, inputs[n], inputs.pop(n) + y))
            )
    try:
        for b in batches:
            for side in ("enc", "dec"):
                real[side] = real_positions(model, b, side)
            model.example_losses(b)  # type: ignore[operator]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: 1.0 - sums[n] / counts[n] for n in sums if counts[n]}


class BlockInfluence(BlockCriterion):
    """Men et al.'s block influence of every component, or every layer with `layers`, over calibration batches (one
    forward pass; pre-norm models). Removal ranks by it and reports show it."""

    name = "block_influence"

    def require(self, model: Any) -> None:
        require_pre_norm(model)

    def __call__(self, model: Any, batches: list[Batch], *, layers: bool = False, scorer: Any = None) -> BlockScores:
        scores = block_influence(model, batches, layers=layers)
        return BlockScores(ranking=scores, shown=scores)


class Contribution(BlockCriterion):
    """Wang & Tu's contribution: the drop of the task's score (`scorer.ablation`: BLEU, accuracy or -perplexity) when
    each component present is zeroed. Reports show Eq. 1 (clipped at `clip_fraction` of the baseline, normalised by
    the largest; with `layers` summed over each layer's sub-layers); removal ranks the drops before the clip
    (removal_ranking), and units whose BLEU decoding stopped at the clip are `bounded`."""

    name = "contribution"
    needs_scorer = True

    def __init__(self, clip_fraction: float = 0.1):
        self.clip_fraction = clip_fraction

    def __call__(self, model: Any, batches: list[Batch], *, layers: bool = False, scorer: Any = None) -> BlockScores:
        if scorer is None:
            raise ValueError("contribution scores by the task's scorer: pass scorer=")
        res = scorer.ablation(model, batches, component_names(model))
        # Eq. 1, for the report (a layer's contribution: the sum of its components')
        shown = summed(contribution_scores(res.drops, res.baseline, self.clip_fraction), layers)
        # removal goes by the unclipped drops: Eq. 1's clip ties every drop above C, and the tie would go by name
        ranking, bounded = removal_ranking(res.drops, res.stopped, layers=layers)
        return BlockScores(ranking=ranking, shown=shown, bounded=bounded)


BLOCK_CRITERIA: dict[str, type[BlockCriterion]] = {"block_influence": BlockInfluence, "contribution": Contribution}


def order_by_importance(scores: dict[str, float]) -> list[str]:
    """Least important first (ties by name)."""
    return [n for _, n in sorted((v, n) for n, v in scores.items())]


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Spearman's rank correlation of two scores over the names they share (ties: average ranks); None when
    fewer than 2 names or when either score is constant (no ranking to compare)."""
    names = sorted(set(a) & set(b))
    if len(names) < 2:
        return None
    ra, rb = average_ranks([a[n] for n in names]), average_ranks([b[n] for n in names])
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
