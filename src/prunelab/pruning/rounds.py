"""Iterative pruning in rounds (Brix, Bahar & Ney 2020): each round is a fresh `trainer.fit`.

A method is a plan: a list of rounds, each either trained at a fixed mask, or pruned gradually inside the
round (MP). Between rounds the next mask is computed from the round's scored (best) weights, and the
surviving weights may be rewound:

    LT      rewind to θ_0 (the initialisation)
    SLT     rewind to θ_t, an early checkpoint of the latest round (t = 5% of its steps by default)
    CLT     as SLT, then every kept weight of a matrix becomes sign(θ_t) * sqrt(6 / (fan_in + fan_out))
    SLT-MP  SLT to 50%, then 60%, then one MP round from 60% to the target, starting from θ_t
    MP-SLT  one MP round to s_i, then SLT rounds from that mask to the target
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunelab.criteria.base import WeightCriterion
from prunelab.errors import UserError
from prunelab.pruning.base import MaskPruner
from prunelab.pruning.schedule import GradualSchedule, Progress

REWINDS = ("none", "init", "early")


def iterative_levels(target: float, start: float = 0.0) -> list[float]:
    """Brix et al.'s schedule: +10 points up to 80%, then +5 points, then the target itself.
    0.9 -> 0.1, 0.2, ..., 0.8, 0.85, 0.9; 0.98 -> ..., 0.9, 0.95, 0.98. Levels above `start` only."""
    levels, pct = [], 0
    while True:
        pct += 10 if pct < 80 else 5
        if pct / 100 >= target - 1e-9:
            break
        if pct / 100 > start + 1e-9:
            levels.append(pct / 100)
    if target > start + 1e-9:
        levels.append(round(target, 6))
    return levels


@dataclass(frozen=True)
class Round:
    sparsity: float  # fixed-mask level; for an MP round, the sparsity it reaches at its end
    rewind: str = "none"  # what the surviving weights are reset to when the round starts
    mp_from: float | None = None  # an MP round: gradual pruning from this sparsity to `sparsity`


class RoundPruner(MaskPruner):
    """Runs a plan of rounds. Round 0 starts from the initialisation; later rounds start from the previous
    round's best weights, masked and possibly rewound. Snapshots (θ_0, θ_t) are buffers, so they are saved
    with every checkpoint and a resumed run rewinds to exactly the same weights."""

    def __init__(
        self,
        sparsity: float,
        plan: list[Round],
        plan_for: Callable[[float], list[Round]] | None = None,
        rewind_fraction: float = 0.05,
        rewind_step: int | None = None,
        rewind_from: str = "latest",
        reinit: str = "none",
        frequency: int = 50,
        start_fraction: float = 0.2,
        end_fraction: float = 0.7,
        start_step: int | None = None,
        end_step: int | None = None,
        scope: str = "per_matrix",
        prune_embeddings: bool = False,
        seed: int = 0,
        criterion: WeightCriterion | str = "magnitude",
    ):
        super().__init__(sparsity=sparsity, prune_embeddings=prune_embeddings, scope=scope, criterion=criterion)
        if rewind_from not in ("latest", "first"):
            raise UserError(f"pruner.rewind_from must be latest or first, got {rewind_from!r}")
        if reinit not in ("none", "constant", "constant_random_sign"):
            raise UserError(f"pruner.reinit must be none, constant or constant_random_sign, got {reinit!r}")
        if not 0.0 <= rewind_fraction < 1.0:
            raise UserError(f"pruner.rewind_fraction must be in [0, 1), got {rewind_fraction}")
        levels = [r.sparsity for r in plan]
        if any(b < a for a, b in itertools.pairwise(levels)):
            raise UserError(f"sparsity levels must not decrease: {levels}")
        if levels and abs(levels[-1] - sparsity) > 1e-9:
            raise UserError(f"the last level {levels[-1]} must be the target sparsity {sparsity}")
        self.plan = plan
        self.plan_for = plan_for  # the plan this method would follow for another target sparsity
        self._needs_early = any(r.rewind == "early" for r in plan)  # θ_t must be captured
        self.rounds = len(plan)
        self.rewind_fraction, self.rewind_step, self.rewind_from = rewind_fraction, rewind_step, rewind_from
        self.reinit = reinit
        self.schedule = GradualSchedule(frequency, start_fraction, end_fraction, start_step, end_step)  # MP rounds
        self.seed = seed
        self.current = 0
        self._params: dict[str, nn.Parameter] = {}

    # --- snapshots ---------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        self._params = dict(model.named_parameters())
        needs = {r.rewind for r in self.plan}
        for kind in ("init", "early"):
            if kind in needs:
                for name, p in self._params.items():
                    key = self.snapshot_buffer(kind, name)
                    if not hasattr(self, key):
                        self.register_buffer(key, p.detach().clone())  # θ_0 is the model as attached

    @torch.no_grad()
    def use_initial_weights(self, state: dict[str, Tensor]) -> None:
        """`ckpt=RUN`: θ_0 is that run's initialisation (its init.pt), not this run's: rewinding to θ_0 must give
        the ticket of the network that was trained."""
        if not any(r.rewind == "init" for r in self.plan):
            return
        for name in self._params:
            if name not in state:
                raise UserError(f"the source run's init.pt has no {name}: it is another model")
            target = getattr(self, self.snapshot_buffer("init", name))
            if state[name].shape != target.shape:
                raise UserError(f"the source run's init.pt holds {name} of shape {tuple(state[name].shape)}")
            target.copy_(state[name])

    @staticmethod
    def snapshot_buffer(kind: str, name: str) -> str:
        return f"theta_{'0' if kind == 'init' else 't'}__" + name.replace(".", "__")

    def snapshot(self, kind: str) -> dict[str, Tensor]:
        return {n: getattr(self, self.snapshot_buffer(kind, n)) for n in self._params}

    @torch.no_grad()
    def _capture_early(self) -> None:
        for name, p in self._params.items():
            getattr(self, self.snapshot_buffer("early", name)).copy_(p)

    def rewind_step_of(self, total_steps: int) -> int:
        step = self.rewind_step if self.rewind_step is not None else round(self.rewind_fraction * total_steps)
        return max(0, min(step, total_steps))

    # --- lifecycle ---------------------------------------------------------------------------------
    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        self.current = round_idx
        self.progress = Progress()  # the round's one-off events are still to come
        rnd = self.plan[round_idx]
        if rnd.rewind != "none" and round_idx > 0:
            with torch.no_grad():
                for name, value in self.snapshot(rnd.rewind).items():
                    self._params[name].copy_(value)
            if self.reinit != "none":
                self._constant_reinit(round_idx)
        self.apply_masks()

    def enter_round(self, round_idx: int) -> None:
        """Called for a resumed round too (nothing is rewound: the checkpoint holds the weights)."""
        self.current = round_idx

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        rnd = self.plan[self.current]
        capture = self.rewind_from == "latest" or self.current == 0
        # θ_t: once, at the first step at or past the rewind step (a re-estimated total may jump over it)
        if capture and self._needs_early and not self.progress.captured and step >= self.rewind_step_of(total_steps):
            self._capture_early()
            self.progress.captured = True
        if rnd.mp_from is not None:
            target = self.schedule.due(step, total_steps, rnd.mp_from, rnd.sparsity, self.progress)
            if target is not None:
                self.prune_to(model, target)

    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        """The next round's mask, from this round's (best) weights by the criterion (magnitude by default)."""
        if round_idx + 1 < self.rounds:
            nxt = self.plan[round_idx + 1]
            self.prune_to(model, nxt.mp_from if nxt.mp_from is not None else nxt.sparsity)

    def mask_is_final(self, step: int, total_steps: int) -> bool:
        rnd = self.plan[self.current]
        return rnd.mp_from is None or self.progress.final_done

    def round_sparsity(self, round_idx: int) -> float:
        return self.plan[round_idx].sparsity

    def same_as_targeting(self, round_idx: int) -> bool:
        """True when rounds 0..round_idx are exactly the plan of this method run with that round's sparsity
        as its target: the round's result then *is* that run's result (LT to 0.9 passes through LT to 0.5)."""
        if self.plan_for is None:
            return False
        try:
            return self.plan_for(self.plan[round_idx].sparsity) == self.plan[: round_idx + 1]
        except UserError:
            return False

    # --- CLT -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _constant_reinit(self, round_idx: int) -> None:
        """Kept weights of each matrix -> sign * sqrt(6 / (fan_in + fan_out)) (the Glorot-uniform bound);
        the sign is θ_t's, or random for the control experiment."""
        gen = torch.Generator().manual_seed(self.seed * 1000 + round_idx)
        for _name, w in self._weights.items():
            fan_out, fan_in = w.shape
            alpha = math.sqrt(6.0 / (fan_in + fan_out))
            if self.reinit == "constant":
                sign = torch.sign(w)
                sign[sign == 0] = 1.0  # a kept weight that is exactly 0 in θ_t still gets a magnitude
            else:
                sign = torch.randint(0, 2, w.shape, generator=gen).to(w) * 2 - 1
            w.copy_(sign * alpha)
