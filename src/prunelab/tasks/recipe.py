"""The optimisation recipe a task trains with (`Recipe`): the optimizer (adam, adamw, adafactor by name, or any
optimizer a `_target_` names), its hyper-parameters, and the lr schedule with its warm-up. The trunk reads it from
the `task/` keys a user sets (`task.lr`, `task.optimizer`, `task.warmup_steps`, `task.schedule`, ...:
prunelab.training.task.build_recipe) and hands it to the task, which owns only its own settings (beam size, label
smoothing, ...). The task asks it for its optimizer over its parameters (`build`) and for the lr factor at each step of
a round (`RoundSchedule`, over the round's steps as `round_steps` reads them from the step budget the round loop hands
over); `clip` clips the gradients where Lightning will not.

Floor: tasks (below the task modules; it imports only torch and errors)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from prunelab.errors import UserError

OPTIMIZERS = ("adam", "adamw", "adafactor")
SCHEDULES = ("inverse_sqrt", "linear")
# a `_target_` optimizer, as the trunk builds it (a partial): called with the parameters and the peak lr
OptimizerFactory = Callable[..., torch.optim.Optimizer]


class RoundBudget(Protocol):
    """A round's step budget as the task reads it (prunelab.training.budget.StepBudget, which the round loop hands
    over before the round trains): the round's steps as now estimated at optimizer step `step`."""

    def total(self, step: int) -> float: ...


def inverse_sqrt_factor(step: int, warmup: int) -> float:
    """Vaswani et al. (2017) at optimizer step `step` (0-based): linear warm-up to the peak lr, then 1/sqrt(step)."""
    step = step + 1
    return min(step / warmup, math.sqrt(warmup / step))


def linear_factor(step: int, warmup: int, total: int) -> float:
    """BERT's fine-tuning schedule (Devlin et al. 2019): linear warm-up to the peak lr, then linear decay to 0 at
    step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def inverse_sqrt_schedule(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: inverse_sqrt_factor(step, warmup_steps)


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    return lambda step: linear_factor(step, warmup_steps, total_steps)


@dataclass(frozen=True)
class Recipe:
    """How a task's network is optimised. `optimizer`: adam (eps 1e-9, the fused kernel where it can run), adamw
    (eps 1e-8, decoupled weight decay on the weight matrices only, not on biases and LayerNorm: BERT, HF's Trainer),
    adafactor, or a factory (a `_target_`) called with the parameters and `lr` (its other settings are its own).
    `schedule`: inverse_sqrt (Vaswani et al.) or linear (warm-up, then linear decay to 0 at the round's last step);
    the warm-up is `warmup_fraction` of the round's steps when set, else `warmup_steps`."""

    lr: float = 3e-3
    warmup_steps: int = 200
    optimizer: str | OptimizerFactory = "adam"
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    schedule: str = "inverse_sqrt"
    warmup_fraction: float | None = None

    def __post_init__(self) -> None:
        if not callable(self.optimizer) and self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"task.optimizer must be one of {', '.join(OPTIMIZERS)} or a node with a _target_, "
                f"got {self.optimizer!r}"
            )
        if self.schedule not in SCHEDULES:
            raise UserError(f"task.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise UserError(f"task.warmup_fraction must be in [0, 1) or null, got {self.warmup_fraction}")
        object.__setattr__(self, "betas", tuple(self.betas))  # a list from YAML

    def warmup_of(self, total: int) -> int:
        """The warm-up steps of a round of `total` steps."""
        if self.warmup_fraction is None:
            return max(1, self.warmup_steps)
        return max(1, round(self.warmup_fraction * total))

    def factor(self, step: int, warmup: int, total: int) -> float:
        """The lr factor (of the peak `lr`) at optimizer step `step` of a round of `total` steps."""
        if self.schedule == "inverse_sqrt":
            return inverse_sqrt_factor(step, warmup)
        return linear_factor(step, warmup, total)

    def build(self, params: list[torch.nn.Parameter], scaled: bool = False) -> torch.optim.Optimizer:
        """The optimizer over `params`; `scaled`: gradients are scaled for fp16 (a GradScaler), where a fused kernel
        would unscale inside its step, after gradient clipping, so the per-tensor loop runs instead."""
        if callable(self.optimizer):
            return self.optimizer(params, lr=self.lr)
        # the fused kernel (CPU and CUDA) updates all tensors in one pass: 3-4x faster than the per-tensor loop
        fused = all(p.device.type in ("cpu", "cuda") for p in params) and not scaled
        if self.optimizer == "adam":
            return torch.optim.Adam(
                params, lr=self.lr, betas=self.betas, eps=1e-9, weight_decay=self.weight_decay, fused=fused
            )
        if self.optimizer == "adamw":
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
            return torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=1e-8, fused=fused)
        return torch.optim.Adafactor(params, lr=self.lr, weight_decay=self.weight_decay)


def round_steps(budget: RoundBudget | None, step: int, estimate: float | None, owner: str = "task") -> int:
    """A round's optimizer steps at optimizer step `step`: its step budget's max_steps, or fewer when a time budget
    (trainer.max_time) will end the round first, at the rate trained so far (training.budget.StageClock), and the
    Trainer's `estimate` (its epoch limit) when one is attached (None: none is). The lr schedule and gradual pruning
    end with the budget."""
    steps = math.inf if estimate is None else estimate
    if budget is not None:
        steps = min(steps, budget.total(step))
    if steps == math.inf and estimate is None:
        raise RuntimeError(f"{owner}: no step budget (use_step_budget) and no Trainer attached")
    return int(steps) if math.isfinite(steps) else int(1e12)


class RoundSchedule:
    """The recipe's lr schedule over one round: the factor at each optimizer step of a round of `total` steps (as the
    round's step budget estimates it then), the warm-up and total steps it was last read with (`seen`), and the highest
    factor it reached (`peak`, counting the steps a resumed round trained in an earlier process). `restart` at each
    round: every round has its own warm-up."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.restart()

    def restart(self) -> None:
        self.peak = 0.0  # the highest lr factor the round's schedule reached (1: the peak lr)
        self.last_step = -1  # the latest step the schedule was read at in this process
        self.seen: dict[str, int] = {}  # warm-up and total steps at the latest scheduler step

    def factor(self, step: int, total: int) -> float:
        """The factor at optimizer step `step` of a round of `total` steps (as now estimated), which it records."""
        warmup = self.recipe.warmup_of(total)
        self.seen = {"warmup_steps": warmup, "total_steps": total}
        return self.recipe.factor(step, warmup, total)

    def traced(self, shape: Callable[[int], float]) -> Callable[[int], float]:
        """`shape` (the factor by step) for a LambdaLR, noting the highest factor reached (a plain function, so that
        the scheduler's state_dict, which keeps a callable object's attributes, stays as it was)."""

        def factor(step: int) -> float:
            # a resumed round jumps to its restored step: the steps before it were trained in an earlier process
            before = max((shape(s) for s in range(self.last_step + 1, step)), default=0.0)
            value = shape(step)
            self.peak = max(self.peak, value, before)
            self.last_step = max(self.last_step, step)
            return value

        return factor

    def report(self) -> dict[str, Any]:
        """How the round's lr schedule went (results.json, per level): warm-up and total steps as last estimated,
        and the highest fraction of the peak lr reached (below 1: the round ended during its warm-up)."""
        return {
            "schedule": self.recipe.schedule,
            "peak_lr": self.recipe.lr,
            **self.seen,  # as estimated at the round's last optimizer step
            "peak_lr_fraction_reached": round(self.peak, 6),
        }


def scaled(trainer: Any) -> bool:
    """Whether `trainer` (a Lightning Trainer, or None) scales the loss for fp16 (a GradScaler in its precision plugin;
    fp32 and bf16 never scale the gradients)."""
    return trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None


def clip(
    optimizer: torch.optim.Optimizer, value: float | None, algorithm: str | None, scaled: bool, lightning: Callable
) -> None:
    """Clip the gradients `optimizer` will step by `value` (by norm, or by value with algorithm "value"; none for
    none). Lightning's mixed-precision plugin refuses to clip for a fused optimizer because an fp16 one unscales inside
    its step; bf16-mixed scales nothing (`scaled` False), so such gradients are clipped here, the others by Lightning's
    `lightning(optimizer, value, algorithm)`."""
    if not value:
        return
    if not getattr(optimizer, "_step_supports_amp_scaling", False) or scaled:
        lightning(optimizer, value, algorithm)
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value, foreach=True)
