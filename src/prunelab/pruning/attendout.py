"""AttendOut (Wu, Zhao & Zhang): the generator network and its REINFORCE update.

G-Net is one single-head self-attention layer (no feed-forward) whose weights are shared across steps: it
is applied recurrently, once per attention layer of the classifier, to the (detached) input embeddings,
and after step l a linear read-out of its pooled state gives the probability p_l of keeping layer l's
attention map. Decisions are sampled per example, keep_l ~ Bernoulli(p_l); A-Net trains with them
(`MultiHeadAttention(map_keep=...)`).

REINFORCE with a baseline (the paper's Eq. 4): with reward r = +1 when A-Net beats D-Net on the cached
batches and -1 otherwise, the G-Net loss is -(r - b) * mean_x sum_l log pi(keep_l | x), and the baseline b
is a moving average of past rewards.

The round logic around it (A and D trained side by side, evaluation every T steps, D <- A, the final
structural pruning with `make_uniform`) is the AttendOut pruner's; this module holds the parts that are
pure functions of tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GNet(nn.Module):
    def __init__(self, d_model: int, n_layers: int):
        super().__init__()
        self.n_layers = n_layers
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, 1)

    def step(self, h: Tensor, mask: Tensor) -> Tensor:
        """One recurrent application: h (B, S, C), mask (B, S) True on real tokens -> the next state."""
        att = F.scaled_dot_product_attention(
            self.q(h)[:, None], self.k(h)[:, None], self.v(h)[:, None], attn_mask=mask[:, None, None, :]
        )[:, 0]
        return self.norm(h + att)

    def keep_logits(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, S, C) input embeddings, mask (B, S) -> keep logits (B, n_layers), one per attention layer."""
        h, out = x, []
        keep = mask[..., None].to(x.dtype)
        for _ in range(self.n_layers):
            h = self.step(h, mask)
            pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
            out.append(self.readout(pooled)[:, 0])
        return torch.stack(out, 1)

    def sample(self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """-> decisions (B, n_layers) in {0, 1} and their log-probability per example (B,)."""
        logits = self.keep_logits(x, mask)
        p = torch.sigmoid(logits)
        keep = torch.bernoulli(p.detach(), generator=generator)
        return keep, log_prob(logits, keep)


def log_prob(logits: Tensor, keep: Tensor) -> Tensor:
    """sum_l log pi(keep_l) for Bernoulli(sigmoid(logits)): (B, L) -> (B,)."""
    return -F.binary_cross_entropy_with_logits(logits, keep, reduction="none").sum(1)


def reinforce_loss(log_probs: Tensor, reward: float, baseline: float) -> Tensor:
    """The REINFORCE-with-baseline loss whose gradient is -(r - b) * E_x grad log pi (Eq. 4)."""
    return -(reward - baseline) * log_probs.mean()


class RewardBaseline:
    """b <- beta * b + (1 - beta) * r, starting at 0."""

    def __init__(self, beta: float = 0.9):
        self.beta = beta
        self.value = 0.0

    def update(self, reward: float) -> float:
        self.value = self.beta * self.value + (1 - self.beta) * reward
        return self.value
