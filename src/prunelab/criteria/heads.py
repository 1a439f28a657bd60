"""Head importance (Michel, Levy & Neubig 2019): I_h = E_x |∂L(x)/∂ξ_h|, ξ_h the gate of head h.

A pure function of a model and batches; it returns one (H,) tensor per attention sub-layer
(`enc.0.sa`, `dec.3.ea`, ...), and leaves the model as it found it. Criteria floor: above models/, below scoring/
and the head pruner that calls it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from prunelab.criteria.base import HeadCriterion
from prunelab.models.addressing import attention_names, component
from prunelab.models.transformer import Transformer


def sentence_losses(model: Transformer, batch: dict[str, Any]) -> Tensor:
    """Per-example loss L(x), (B,): the model's own (mean token NLL for NMT, cross-entropy for a classifier)."""
    return model.example_losses(batch)


def head_importance(
    model: Transformer,
    batches: Iterable[dict[str, Any]],
    normalize: bool = True,
    max_batches: int | None = None,
    groups: bool = False,
) -> dict[str, Tensor]:
    """I_h averaged over every example of `batches` (or the first `max_batches`). With `groups`, the importance of
    each K/V group of a grouped-query attention instead, (KV,) per sub-layer in the order of its `kv_ids`: the gate
    of a group scales all of its query heads, so ∂L/∂ξ_g = Σ_{h in g} ∂L/∂ξ_h, taken per example before the
    absolute value (without grouped-query attention every head is its own group: I_h itself).

    Each example gets its own copy of the gates, so |∂L(x)/∂ξ_h| is taken per example before averaging
    (the absolute value of a batch gradient would let examples cancel). Heads that are already gated off
    keep their gate value. With normalize, each sub-layer's vector is divided by its L2 norm, as in the paper.
    """
    names = attention_names(model)
    modules = {n: component(model, n) for n in names}
    saved = {n: m.head_gate for n, m in modules.items()}
    # each head's column in its group's total: (H, G) one-hot, G the groups left (the heads themselves without GQA)
    member = {
        n: (
            torch.nn.functional.one_hot(m.group_index(), len(m.kv_ids)).double()
            if groups and m.grouped
            else torch.eye(m.n_heads, dtype=torch.float64)
        )
        for n, m in modules.items()
    }
    totals = {n: torch.zeros(member[n].size(1), dtype=torch.float64) for n in names}
    count = 0
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model as it is used
    try:
        for batch in itertools.islice(batches, max_batches):  # never draws a batch past max_batches
            B = batch["src"].size(0)
            gates = {n: saved[n].detach().expand(B, -1).clone().requires_grad_(True) for n in names}  # (B, H)
            for n, m in modules.items():
                m.head_gate = gates[n]
            losses = sentence_losses(model, batch)  # (B,)
            grads = torch.autograd.grad(losses.sum(), [gates[n] for n in names])  # row b = ∂L(x_b)/∂ξ
            for n, g in zip(names, grads, strict=True):
                totals[n] += (g.detach().double().cpu() @ member[n]).abs().sum(0)  # per example, then |.|
            count += B
    finally:
        for n, m in modules.items():
            m.head_gate = saved[n]
        model.train(was_training)
    if count == 0:
        raise ValueError("head_importance needs at least one batch")
    scores = {n: (t / count).float() for n, t in totals.items()}
    if normalize:
        scores = {n: s / s.norm() if s.norm() > 0 else s for n, s in scores.items()}
    return scores


class HeadImportance(HeadCriterion):
    """Michel et al.'s I_h = E_x |∂L(x)/∂ξ_h| (or a K/V group's gate), L2-normalised per layer: `head_importance`."""

    name = "head_importance"

    def __call__(
        self, model: Any, batches: Iterable[dict[str, Any]], *, max_batches: int | None = None, groups: bool = False
    ) -> dict[str, Tensor]:
        return head_importance(model, batches, max_batches=max_batches, groups=groups)


HEAD_CRITERIA: dict[str, type[HeadCriterion]] = {"head_importance": HeadImportance}  # by name in `pruner.criterion`
