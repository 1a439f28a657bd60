"""Head importance (Michel, Levy & Neubig 2019): I_h = E_x |∂L(x)/∂ξ_h|, ξ_h the gate of head h.

A pure function of a model and batches; it returns one (H,) tensor per attention sub-layer
(`enc.0.sa`, `dec.3.ea`, ...), and leaves the model as it found it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from prunelab.models.addressing import attention_names, component
from prunelab.models.transformer import Transformer


def sentence_losses(model: Transformer, batch: dict[str, Any]) -> Tensor:
    """Per-sentence loss L(x): the mean token negative log-likelihood of the reference, (B,)."""
    logits = model(batch["src"], batch["tgt_in"])  # (B, T, V)
    tgt = batch["tgt_out"]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 up, float64 stays
    nll = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=model.cfg.pad_id, reduction="none")
    mask = (tgt != model.cfg.pad_id).float()
    return (nll.view_as(mask) * mask).sum(1) / mask.sum(1).clamp(min=1)


def head_importance(
    model: Transformer, batches: Iterable[dict[str, Any]], normalize: bool = True, max_batches: int | None = None
) -> dict[str, Tensor]:
    """I_h averaged over every example of `batches` (or the first `max_batches`).

    Each example gets its own copy of the gates, so |∂L(x)/∂ξ_h| is taken per example before averaging
    (the absolute value of a batch gradient would let examples cancel). Heads that are already gated off
    keep their gate value. With normalize, each sub-layer's vector is divided by its L2 norm, as in the paper.
    """
    names = attention_names(model)
    modules = {n: component(model, n) for n in names}
    saved = {n: m.head_gate for n, m in modules.items()}
    totals = {n: torch.zeros(m.n_heads, dtype=torch.float64) for n, m in modules.items()}
    count = 0
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model as it is used
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            B = batch["src"].size(0)
            gates = {n: saved[n].detach().expand(B, -1).clone().requires_grad_(True) for n in names}  # (B, H)
            for n, m in modules.items():
                m.head_gate = gates[n]
            losses = sentence_losses(model, batch)  # (B,)
            grads = torch.autograd.grad(losses.sum(), [gates[n] for n in names])  # row b = ∂L(x_b)/∂ξ
            for n, g in zip(names, grads, strict=True):
                totals[n] += g.detach().abs().sum(0).double().cpu()
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
