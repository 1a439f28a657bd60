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

import copy
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import UserError
from prunelab.models.addressing import component
from prunelab.models.surgery import make_uniform
from prunelab.pruning.base import Pruner

log = logging.getLogger("prunelab")


class GNet(nn.Module):
    def __init__(self, d_model: int, n_layers: int, initial_keep: float = 0.9):
        super().__init__()
        self.n_layers = n_layers
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, 1)
        with torch.no_grad():  # start by keeping most maps: A-Net begins close to D-Net, dropping is learned
            self.readout.weight.mul_(0.1)
            self.readout.bias.fill_(math.log(initial_keep / (1 - initial_keep)))

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


class AttendOutPruner(Pruner):
    """`pruner=attendout` (Algorithm 1). Round 0 trains D-Net (the run's model, regular dropout) while this
    pruner trains A-Net, a copy that also receives G-Net's per-layer keep/drop decisions, on the same
    batches. Every `every` steps A and D are scored (loss) on the cached batches with the cached decisions;
    G-Net gets reward +1 if A wins and -1 otherwise and takes a REINFORCE step (lr `g_lr`, moving-average
    baseline); the cache is cleared and D takes A's weights. At the end of the round every layer whose
    mean keep probability on the validation data is below `threshold` is pruned structurally (constant 1/n
    attention, no Q or K); round 1 only evaluates the pruned model. The report gives the proportion of
    attention layers pruned (the paper's "Prop. Atd.Outs")."""

    rounds = 2

    def __init__(
        self,
        every: int = 15,
        g_lr: float = 5e-5,
        lr: float = 1e-3,
        warmup_steps: int = 200,
        threshold: float = 0.5,
        baseline_beta: float = 0.9,
        initial_keep: float = 0.9,
        seed: int = 0,
    ):
        super().__init__(sparsity=0.0)
        if every < 1:
            raise UserError(f"pruner.every must be >= 1, got {every}")
        if not 0.0 < threshold <= 1.0:
            raise UserError(f"pruner.threshold must be in (0, 1], got {threshold}")
        self.every, self.g_lr, self.lr, self.warmup_steps = every, g_lr, lr, warmup_steps
        self.threshold = threshold
        if not 0.0 < initial_keep < 1.0:
            raise UserError(f"pruner.initial_keep must be in (0, 1), got {initial_keep}")
        self.initial_keep = initial_keep
        self.baseline = RewardBaseline(baseline_beta)
        self.generator = torch.Generator().manual_seed(seed)
        self._datamodule: Any = None
        self._cache: list[tuple[dict[str, Tensor], Tensor, Tensor]] = []  # (batch, decisions, log-prob)
        self._steps = 0
        self.rewards: list[float] = []

    def attach(self, model: nn.Module) -> None:
        if getattr(model, "kind", "") != "classification":
            raise UserError("pruner=attendout prunes the self-attention of a classifier (e.g. model=classifier_tiny)")
        self._weights = {}
        if not hasattr(self, "a_net"):
            self.a_net = copy.deepcopy(model)
            self.g_net = GNet(model.cfg.d_model, len(model.enc), self.initial_keep)  # type: ignore[union-attr,arg-type]
            self.register_buffer("keep_probability", torch.full((len(model.enc),), float("nan")))  # type: ignore[arg-type]
        self._a_opt: torch.optim.Optimizer | None = None
        self._g_opt: torch.optim.Optimizer | None = None

    def use_data(self, datamodule: object) -> None:
        self._datamodule = datamodule

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        return max_steps if round_idx == 0 else 0

    def stage(self, round_idx: int) -> str:
        return ("attendout", "pruned")[round_idx]

    def _inputs(self, net: nn.Module, src: Tensor) -> tuple[Tensor, Tensor]:
        return net.embed_tokens(src).detach(), src != net.cfg.pad_id  # type: ignore[operator,union-attr]

    def on_batch(self, model: nn.Module, batch: dict) -> None:
        if not torch.is_grad_enabled():
            return
        a, src, label = self.a_net, batch["src"], batch["label"]
        if self._a_opt is None:
            self._a_opt = torch.optim.Adam(a.parameters(), lr=self.lr, betas=(0.9, 0.98), eps=1e-9)
            self._g_opt = torch.optim.Adam(self.g_net.parameters(), lr=self.g_lr)
        a.train()
        keep, lp = self.g_net.sample(*self._inputs(a, src), generator=self.generator)
        for group in self._a_opt.param_groups:  # the same warm-up and decay as D-Net's
            group["lr"] = self.lr * min(
                (self._steps + 1) / self.warmup_steps, (self.warmup_steps / (self._steps + 1)) ** 0.5
            )
        self._a_opt.zero_grad(set_to_none=True)
        F.cross_entropy(a(src, keep).float(), label).backward()
        self._a_opt.step()
        self._cache.append(({"src": src, "label": label}, keep, lp))
        self._steps += 1
        if self._steps % self.every == 0:
            self.cycle(model)

    @torch.no_grad()
    def _cached_loss(self, net: nn.Module, with_decisions: bool) -> float:
        was = net.training
        net.eval()
        total = sum(
            float(F.cross_entropy(net(b["src"], keep if with_decisions else None).float(), b["label"]))
            for b, keep, _ in self._cache
        )
        net.train(was)
        return total

    def cycle(self, model: nn.Module) -> float:
        """A vs D on the cached batches, the G-Net update, the cache cleared, D <- A. -> the reward."""
        reward = 1.0 if self._cached_loss(self.a_net, True) < self._cached_loss(model, False) else -1.0
        loss = reinforce_loss(torch.cat([lp for _, _, lp in self._cache]), reward, self.baseline.value)
        assert self._g_opt is not None
        self._g_opt.zero_grad(set_to_none=True)
        loss.backward()
        self._g_opt.step()
        self.baseline.update(reward)
        self.rewards.append(reward)
        self._cache.clear()
        with torch.no_grad():
            for d, a in zip(model.parameters(), self.a_net.parameters(), strict=True):
                d.copy_(a)
        return reward

    @torch.no_grad()
    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        if round_idx != 0:
            return
        probs, count = torch.zeros(len(model.enc)), 0  # type: ignore[arg-type]
        for b in self._datamodule.val_dataloader():
            x, mask = self._inputs(model, b["src"])
            probs += torch.sigmoid(self.g_net.keep_logits(x, mask)).sum(0)
            count += len(b["src"])
        self.keep_probability.copy_(probs / max(count, 1))
        drop = [f"enc.{i}.sa" for i, p in enumerate(self.keep_probability.tolist()) if p < self.threshold]
        log.info(
            "attendout: keep probabilities %s; pruning %s", [round(p, 3) for p in self.keep_probability.tolist()], drop
        )
        make_uniform(model, drop)  # type: ignore[arg-type]

    def report(self, model: nn.Module) -> dict:
        layers = [f"enc.{i}.sa" for i in range(len(model.enc))]  # type: ignore[arg-type]
        pruned = [n for n in layers if component(model, n).uniform]  # type: ignore[arg-type,union-attr]
        total = sum(p.numel() for p in model.parameters())
        return {
            "sparsity": {"overall": len(pruned) / len(layers)},  # the proportion of attention layers pruned
            "params": {"total": total, "remaining": total},
            "memory": {"model": {"dense_bytes": 4 * total}},
            "attendout": {
                "pruned_layers": pruned,
                "proportion_pruned": f"{len(pruned)}/{len(layers)}",
                "keep_probability": [float(p) for p in self.keep_probability.tolist()],
                "rewards": {"a_wins": self.rewards.count(1.0), "d_wins": self.rewards.count(-1.0)},
            },
        }
