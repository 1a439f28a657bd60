"""AttendOut (Wu, Zhao & Zhang): the generator network and its REINFORCE update.

G-Net is one single-head self-attention layer (no feed-forward) whose weights are shared across steps: it
is applied recurrently, once per attention layer of the classifier, to the (detached) input embeddings,
and after step l a linear read-out of its pooled state gives the probability p_l of keeping layer l's
attention map. Decisions are sampled per example, keep_l ~ Bernoulli(p_l); A-Net trains with them
(`MultiHeadAttention(map_keep=...)`).

REINFORCE with a baseline (the paper's Eq. 4): the G-Net loss is -mean_x (r_x - b) sum_l log pi(keep_l | x),
and the baseline b is a moving average of past mean rewards. The reward r_x of example x comes from the
A-vs-D evaluation on the cached batches, in one of two forms (`reward`):

- "sign": r_x = +1 for every example when A-Net's summed loss is below D-Net's, -1 when it is above, 0 on a
  tie (A = D: neither arm won, G-Net learns nothing from the cycle) (one scalar a cycle);
- "margin": r_x = loss_D(x) - loss_A(x), each example's own A-vs-D loss difference (nats), so a decision is
  credited with what it cost on its own example.

Both can add `drop_bonus` nats per dropped map: r_x += drop_bonus * n_dropped(x). With "margin" this reads as
"drop a map when A-Net loses less than drop_bonus nats on the example for it". The bonus is prunelab's
addition: the paper's reward could not be checked here (experiments/wu2022/README.md), and "sign" alone
learns to keep every map (`tests/unit/test_attendout_gnet.py`). A +/-1 reward saturates once A-Net always
loses, so "sign" with a bonus drops everything; "margin" with a bonus keeps the maps that cost more than it.

The round logic around it (A and D trained side by side, evaluation every T steps, D <- A, the final
structural pruning with `make_uniform`) is the AttendOut pruner's; this module holds the parts that are
pure functions of tensors. The two arms differ only by G-Net's decisions: A-Net trains with D-Net's loss,
optimizer, lr schedule, gradient clipping and precision (the task's and its Trainer's), and the cycle
compares them before A-Net's step on the cycle's last batch, when both have stepped on the same batches.
G-Net's inputs are the input embeddings without dropout, so its keep probabilities (and the pruning
decision) do not depend on the random state.

Under DDP every rank trains A-Net and G-Net on its own shard: their gradients are averaged over the ranks
before each step, the cached losses are summed over the ranks before A and D are compared, and the keep
probabilities are averaged over the whole validation set, so every rank holds the same A, G, reward and
pruning decision. A-Net and G-Net live outside the module tree (DDP must not reduce them with D-Net's
gradients); their weights, optimizer states and the batches cached since the last cycle travel in the
checkpoint's `pruner_state`, so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.distributed import average_over_ranks, rows_differing_across_ranks, sum_over_ranks, world
from prunelab.errors import UserError
from prunelab.models.addressing import component
from prunelab.models.kernels import attention
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
        att = attention(self.q(h)[:, None], self.k(h)[:, None], self.v(h)[:, None], mask[:, None, None, :])[:, 0]
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


def reinforce_loss(log_probs: Tensor, reward: float | Tensor, baseline: float) -> Tensor:
    """The REINFORCE-with-baseline loss whose gradient is -E_x (r_x - b) grad log pi(x) (Eq. 4); the reward is
    one number for every example, or one per example (B,)."""
    return -((reward - baseline) * log_probs).mean()


REWARDS = ("sign", "margin")


def verdict(a_total: float, d_total: float) -> float:
    """The cycle's verdict on the summed losses: +1 when A-Net's is lower, -1 when D-Net's is, 0 on a tie."""
    return 1.0 if a_total < d_total else -1.0 if a_total > d_total else 0.0


def example_rewards(
    a_loss: Tensor, d_loss: Tensor, keep: Tensor, mode: str, drop_bonus: float, sign: float
) -> float | Tensor:
    """Each example's reward from its A-Net and D-Net losses (N,) and decisions (N, L); `sign` is the cycle's
    `verdict` on the summed losses of every rank. -> a float when every example gets the same."""
    if mode == "sign" and drop_bonus == 0.0:
        return sign
    base = torch.full_like(a_loss, sign) if mode == "sign" else d_loss - a_loss
    return base + drop_bonus * (1.0 - keep).sum(1).to(base.dtype)


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
    batches with the task's recipe (`use_data` hands the task over: its optimizer and lr schedule, the
    Trainer's gradient clipping and precision). Every `every` steps, before A's step on the cycle's last
    batch, A and D are scored (loss) on the cached batches with the cached decisions;
    G-Net is rewarded from that comparison and takes a REINFORCE step (lr `g_lr`, moving-average
    baseline); the cache is cleared and D takes A's weights. At the end of the round every layer whose
    mean keep probability on the validation data is below `threshold` is pruned structurally (constant 1/n
    attention, no Q or K); round 1 only evaluates the pruned model. The report gives the proportion of
    attention layers pruned (the paper's "Prop. Atd.Outs").

    `reward` and `drop_bonus` choose the reward (module docstring): "sign" (+/-1 for the cycle, as the paper is
    summarised in DESIGN.md, 0 on a tie) or "margin" (each example's A-vs-D loss difference), plus nats per
    dropped map."""

    tasks = ("classification",)  # it prunes the self-attention maps of a classifier

    rounds = 2

    @property
    def sparsity_means(self) -> str:
        return "not read (layers are pruned by pruner.threshold); sparsity.overall: the attention layers pruned"

    def __init__(
        self,
        every: int = 15,
        g_lr: float = 5e-5,
        threshold: float = 0.5,
        baseline_beta: float = 0.9,
        initial_keep: float = 0.9,
        reward: str = "sign",
        drop_bonus: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if every < 1:
            raise UserError(f"pruner.every must be >= 1, got {every}")
        if not 0.0 < threshold <= 1.0:
            raise UserError(f"pruner.threshold must be in (0, 1], got {threshold}")
        self.every, self.g_lr = every, g_lr
        self.threshold = threshold
        if not 0.0 < initial_keep < 1.0:
            raise UserError(f"pruner.initial_keep must be in (0, 1), got {initial_keep}")
        self.initial_keep = initial_keep
        if reward not in REWARDS:
            raise UserError(f"pruner.reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        if drop_bonus < 0:
            raise UserError(f"pruner.drop_bonus must be >= 0, got {drop_bonus}")
        self.reward, self.drop_bonus = reward, float(drop_bonus)
        self.baseline = RewardBaseline(baseline_beta)
        self.seed = seed
        self._datamodule: Any = None
        # the task (A-Net's recipe: its optimizer and schedule, its Trainer's clipping and precision), in a plain
        # dict: the task owns this pruner, so as a submodule it would loop
        self._given: dict[str, Any] = {}
        self._a_factor: Any = None  # A-Net's lr factor by step (the task's schedule)
        self._label_smoothing = 0.0
        # (batch, decisions, G-Net inputs): log-probabilities are recomputed at the cycle (G is unchanged
        # in between), so the cache holds tensors only and goes into checkpoints
        self._cache: list[tuple[dict[str, Tensor], Tensor, tuple[Tensor, Tensor]]] = []
        self._steps = 0
        self.rewards: list[float] = []  # +1 when A-Net won the cycle, -1 when D-Net did, 0 on a tie
        self.mean_rewards: list[float] = []  # each cycle's mean reward (= the above for reward=sign, no bonus)
        self._nets: dict[str, nn.Module] = {}  # a plain dict: not submodules, so DDP leaves them alone
        self._opts: dict[str, torch.optim.Optimizer] = {}
        self._pending_opt_state: dict[str, Any] = {}

    @property
    def a_net(self) -> nn.Module:
        return self._nets["a"]

    @property
    def g_net(self) -> GNet:
        return self._nets["g"]  # type: ignore[return-value]

    def attach(self, model: nn.Module) -> None:
        if not self._nets:
            self._nets = {
                "a": copy.deepcopy(model),
                "g": GNet(model.cfg.d_model, len(model.enc), self.initial_keep),  # type: ignore[union-attr,arg-type]
            }
            self.register_buffer("keep_probability", torch.full((len(model.enc),), float("nan")))  # type: ignore[arg-type]

    def use_data(self, datamodule: object, task: Any = None) -> None:
        self._datamodule, self._given["task"] = datamodule, task
        # A-Net trains on the task's own loss, as D-Net does (a classifier's label smoothing)
        self._label_smoothing = float(getattr(task, "label_smoothing", 0.0) or 0.0)

    @torch.no_grad()
    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        """A-Net starts from D-Net's weights as the round starts, not as the model was built: with `ckpt=`
        the trained weights arrive after attach (a resumed round restores A from its checkpoint instead)."""
        if round_idx == 0:
            self.a_net.load_state_dict(model.state_dict())

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        return max_steps if round_idx == 0 else 0

    def stage(self, round_idx: int) -> str:
        return ("attendout", "pruned")[round_idx]

    @torch.no_grad()
    def _inputs(self, net: nn.Module, src: Tensor, types: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """G-Net's inputs: `net`'s input embeddings without dropout (G-Net's keep probabilities, hence its
        decisions, must not depend on the random state) and the real-token mask."""
        was = net.training
        net.eval()
        try:
            x = net.embed_tokens(src, types=types)  # type: ignore[operator]
        finally:
            net.train(was)
        return x, src != net.cfg.pad_id  # type: ignore[union-attr]

    @property
    def _task(self) -> Any:
        return self._given.get("task")

    def _trainer(self) -> Any:
        """The Trainer running the task (D-Net's clipping and precision), or None outside one."""
        return getattr(self._task, "_trainer", None)  # LightningModule.trainer raises when there is none

    def _optimizers(self, device: torch.device) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """A's optimizer (the task's, with its lr factor) and G's Adam, created on first use, on the batches'
        device (with any state from a checkpoint)."""
        if not self._opts:
            if not callable(getattr(self._task, "make_optimizer", None)):
                raise RuntimeError(
                    "AttendOutPruner.use_data(datamodule, task) must be called before training: A-Net trains "
                    "with the task's optimizer (task.make_optimizer)"
                )
            for net in self._nets.values():
                net.to(device)
            a_opt, self._a_factor = self._task.make_optimizer([p for p in self.a_net.parameters() if p.requires_grad])
            for group in a_opt.param_groups:
                group.setdefault("initial_lr", group["lr"])  # the peak lr the factor scales, as LambdaLR keeps it
            self._opts = {"a": a_opt, "g": torch.optim.Adam(self.g_net.parameters(), lr=self.g_lr)}
            for k, state in self._pending_opt_state.items():
                self._opts[k].load_state_dict(state)
            self._pending_opt_state = {}
        return self._opts["a"], self._opts["g"]

    def _autocast(self) -> Any:
        """D-Net's training forward context (the Trainer's precision, e.g. bf16-mixed autocast) for A-Net's;
        none under fp16 loss scaling, which A-Net's step does not do (it then trains in fp32)."""
        plugin = getattr(self._trainer(), "precision_plugin", None)
        if plugin is None or getattr(plugin, "scaler", None) is not None or not hasattr(plugin, "train_step_context"):
            return contextlib.nullcontext()
        return plugin.train_step_context()

    def _clip(self, params: list[Tensor]) -> None:
        """D-Net's gradient clipping (trainer.gradient_clip_val and _algorithm) on A-Net's gradients."""
        trainer = self._trainer()
        value = getattr(trainer, "gradient_clip_val", None)
        if not value:
            return
        if getattr(trainer, "gradient_clip_algorithm", None) == "value":
            torch.nn.utils.clip_grad_value_(params, value)
        else:
            torch.nn.utils.clip_grad_norm_(params, value, foreach=True)

    def on_batch(self, model: nn.Module, batch: dict) -> None:
        if not torch.is_grad_enabled():
            return
        src, label, types = batch["src"], batch["label"], batch.get("types")  # types: sentence pairs only
        kept = {"src": src, "label": label} | ({} if types is None else {"types": types})  # what the cache holds
        a_opt, _ = self._optimizers(src.device)
        a = self.a_net
        a.train()
        # decisions drawn from a generator seeded by (seed, rank, step): reproducible after a resume, and
        # every DDP rank draws its own
        rank, _ = world()
        gen = torch.Generator(device=src.device).manual_seed(self.seed * 1_000_003 + rank * 10_007 + self._steps)
        x, mask = self._inputs(a, src, types)
        with torch.no_grad():
            keep, _ = self.g_net.sample(x, mask, generator=gen)
        self._cache.append((kept, keep, (x, mask)))
        if len(self._cache) >= self.every:
            # before A's step on this batch: D has not stepped on it yet either (Lightning steps D after this
            # hook), so both arms have trained on the same batches when they are compared
            self.cycle(model)
        for group in a_opt.param_groups:  # the task's schedule, at A's step (D's LambdaLR, at D's)
            group["lr"] = group["initial_lr"] * self._a_factor(self._steps)
        a_opt.zero_grad(set_to_none=True)
        with self._autocast():
            logits = a(src, keep, types=types)
        F.cross_entropy(logits.float(), label, label_smoothing=self._label_smoothing).backward()
        grads = [p for p in a.parameters() if p.grad is not None]
        average_over_ranks([p.grad for p in grads])
        self._clip(grads)
        a_opt.step()
        self._steps += 1

    @torch.no_grad()
    def _cached_loss(self, net: nn.Module, with_decisions: bool) -> Tensor:
        """-> each cached example's plain cross-entropy (N,), float64: A and D are compared on the evaluation loss."""
        was = net.training
        net.eval()
        losses = torch.cat(
            [
                F.cross_entropy(
                    net(b["src"], keep if with_decisions else None, types=b.get("types")).float(),
                    b["label"],
                    reduction="none",
                )
                for b, keep, _ in self._cache
            ]
        )
        net.train(was)
        return losses.double()

    def cycle(self, model: nn.Module) -> float:
        """A vs D on the cached batches (of every rank), the G-Net update, the cache cleared, D <- A.
        -> the cycle's mean reward."""
        a_loss, d_loss = self._cached_loss(self.a_net, True), self._cached_loss(model, False)
        totals = torch.stack([a_loss.sum(), d_loss.sum()])
        sum_over_ranks(totals)
        sign = verdict(float(totals[0]), float(totals[1]))
        self._check_ranks_agree()
        keep = torch.cat([k for _, k, _ in self._cache])
        reward = example_rewards(a_loss, d_loss, keep, self.reward, self.drop_bonus, sign)
        if isinstance(reward, Tensor):  # the mean over the examples of every rank
            total, count = reward.sum(), torch.tensor(float(len(reward)), dtype=reward.dtype, device=reward.device)
            sum_over_ranks(total, count)
            mean_reward, reward = float(total / count), reward.float()
        else:
            mean_reward = reward
        log_probs = torch.cat([log_prob(self.g_net.keep_logits(x, m), k) for _, k, (x, m) in self._cache])
        loss = reinforce_loss(log_probs, reward, self.baseline.value)
        _, g_opt = self._optimizers(log_probs.device)
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        average_over_ranks([p.grad for p in self.g_net.parameters() if p.grad is not None])
        g_opt.step()
        self.baseline.update(mean_reward)
        self.rewards.append(sign)
        self.mean_rewards.append(mean_reward)
        self._cache.clear()
        with torch.no_grad():
            for d, a in zip(model.parameters(), self.a_net.parameters(), strict=True):
                d.copy_(a)
        return mean_reward

    @torch.no_grad()
    def _check_ranks_agree(self) -> None:
        """Under DDP: A-Net must be the same on every rank (D takes its weights); stop if it is not."""
        total = torch.stack([p.double().sum() for p in self.a_net.parameters()]).sum().reshape(1)
        if rows_differing_across_ranks(total):
            raise RuntimeError(f"AttendOut: A-Net differs across DDP ranks at step {self._steps}")

    # --- checkpoints ---------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "a_net": self.a_net.state_dict(),
            "g_net": self.g_net.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self._opts.items()} or self._pending_opt_state,
            "steps": self._steps,
            "rewards": list(self.rewards),
            "mean_rewards": list(self.mean_rewards),
            "baseline": self.baseline.value,
            "cache": [(b, keep, x, m) for b, keep, (x, m) in self._cache],
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.a_net.load_state_dict(state["a_net"])
        self.g_net.load_state_dict(state["g_net"])
        self._opts, self._pending_opt_state = {}, dict(state["optimizers"])  # applied on the batches' device
        self._steps, self.rewards, self.baseline.value = state["steps"], list(state["rewards"]), state["baseline"]
        self.mean_rewards = list(state.get("mean_rewards", self.rewards))
        self._cache = [(b, keep, (x, m)) for b, keep, x, m in state["cache"]]

    @torch.no_grad()
    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        if round_idx != 0:
            return
        dev = next(model.parameters()).device
        self.g_net.to(dev)
        probs, count = torch.zeros(len(model.enc), device=dev), torch.zeros((), device=dev)  # type: ignore[arg-type]
        for b in self._datamodule.val_dataloader():
            types = b.get("types")
            x, mask = self._inputs(model, b["src"].to(dev), None if types is None else types.to(dev))
            probs += torch.sigmoid(self.g_net.keep_logits(x, mask)).sum(0)
            count += len(b["src"])
        sum_over_ranks(probs, count)  # each rank saw its shard of the validation set
        self.keep_probability.copy_(probs / count.clamp(min=1))
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
                "rewards": {
                    "a_wins": self.rewards.count(1.0),
                    "d_wins": self.rewards.count(-1.0),
                    "ties": self.rewards.count(0.0),
                },
                "reward": self.reward,
                "drop_bonus": self.drop_bonus,
                "mean_reward_last_10": (
                    sum(self.mean_rewards[-10:]) / len(self.mean_rewards[-10:]) if self.mean_rewards else None
                ),
            },
        }
