"""Gating units off, and the head ablation studies of Michel, Levy & Neubig (2019), as pure functions of a model and
a score callable (criteria floor: above models/, below scoring/).

Heads are masked through their gates (ξ_h = 0), never by editing weights, and every function restores the
gates it touched. What a study scores by (corpus BLEU, accuracy) is the `evaluate` callable it is given
(prunelab.scoring).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from prunelab.models.addressing import attention_names, component, component_type, gate, head_names
from prunelab.models.transformer import Transformer

Batch = dict[str, Any]
ATTENTION_TYPES = ("E:SA", "D:SA", "D:EA")  # enc-self, dec-self, enc-dec


@contextmanager
def gates_off(model: Transformer, names: Iterable[str]):
    """Gate the named heads (`dec.2.ea.h5`) or components (`enc.1.ff`: output replaced by zeros) off for
    the duration of the block."""
    gates = [gate(model, n) for n in names]
    saved = [g.clone() for g in gates]
    try:
        for g in gates:
            g.fill_(0.0)
        yield
    finally:
        for g, s in zip(gates, saved, strict=True):
            g.copy_(s)


heads_off = gates_off  # the head studies' name for it


def single_head_ablation(model: Transformer, evaluate: Callable[[], float]) -> tuple[float, dict[str, float]]:
    """Table 1 analogue: the change in score when each head alone is masked. -> (baseline, {head: delta})."""
    base = evaluate()
    deltas = {}
    for h in head_names(model):
        with heads_off(model, [h]):
            deltas[h] = evaluate() - base
    return base, deltas


def keep_one_head(
    model: Transformer, evaluate_valid: Callable[[], float], evaluate_test: Callable[[], float]
) -> dict[str, dict[str, float | int]]:
    """Tables 2 and 5 analogue: per attention sub-layer, keep only one head; the head is chosen on valid and
    the choice scored on test. -> {component: {head, valid, test, delta_test}}."""
    base_test = evaluate_test()
    out: dict[str, dict[str, float | int]] = {}
    for comp in attention_names(model):
        ids = component(model, comp).head_ids.tolist()
        scores = {}
        for keep in ids:
            with heads_off(model, [f"{comp}.h{j}" for j in ids if j != keep]):
                scores[keep] = evaluate_valid()
        best = max(scores, key=lambda j: scores[j])
        with heads_off(model, [f"{comp}.h{j}" for j in ids if j != best]):
            test = evaluate_test()
        out[comp] = {"head": best, "valid": scores[best], "test": test, "delta_test": test - base_test}
    return out


def scores_by_head(model: Transformer, scores: dict[str, Tensor]) -> dict[str, float]:
    """Per-sub-layer score vectors (by position, as head_importance returns them) -> {head name: score}."""
    return {
        f"{c}.h{j}": float(v)
        for c, s in scores.items()
        for j, v in zip(component(model, c).head_ids.tolist(), s.tolist(), strict=True)
    }


def scores_by_group(model: Transformer, scores: dict[str, Tensor]) -> dict[str, float]:
    """Per-sub-layer K/V-group score vectors (head_importance(groups=True)) -> {group name `dec.0.sa.g1`: score};
    without grouped-query attention a group is its head, numbered as the head."""
    out = {}
    for c, s in scores.items():
        m = component(model, c)
        ids = m.kv_ids.tolist() if m.grouped else m.head_ids.tolist()  # type: ignore[union-attr]
        out.update({f"{c}.g{k}": float(v) for k, v in zip(ids, s.tolist(), strict=True)})
    return out


def order_by_score(scores: dict[str, float], types: Iterable[str] | None = None) -> list[str]:
    """Head names from least to most important (ties by name), optionally only some attention types."""
    wanted = set(types) if types is not None else set(ATTENTION_TYPES)
    heads = [(v, h) for h, v in scores.items() if component_type(h) in wanted]
    return [h for _, h in sorted(heads)]


def iterative_pruning(
    model: Transformer, order: Sequence[str], evaluate: Callable[[], float], step: float = 0.1
) -> list[tuple[float, float]]:
    """Figures 3 and 4 analogue: mask heads along `order`, `step` of them at a time (a fraction of the
    heads in `order`); -> [(fraction pruned, score)], starting at (0, unpruned score)."""
    n = len(order)
    points = [(0.0, evaluate())]
    for count in pruning_counts(n, step):
        with heads_off(model, order[:count]):
            points.append((count / n, evaluate()))
    return points


def pruning_counts(n: int, step: float) -> list[int]:
    """The head counts `iterative_pruning` masks, in order: ceil(k * step * n) for k = 1, 2, ... up to n, each
    once (with few heads two steps can round to the same count). None for n = 0 (e.g. decoder attention types
    of a classifier: nothing to prune). A curve scores 1 + len(pruning_counts(n, step)) times."""
    counts: list[int] = []
    k = 1
    while n and (not counts or counts[-1] < n):
        count = min(n, math.ceil(round(k * step * n, 9)))
        if not counts or count != counts[-1]:
            counts.append(count)
        k += 1
    return counts
