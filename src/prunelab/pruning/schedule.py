"""Sparsity schedules."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prunelab.errors import UserError


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta (2017) gradual pruning: s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (t_end - t_0))^3.

    Dense (0) before `start`, `initial` at `start`, `final` from `end` on. Equivalent to the form
    s_t = s_T + min(0, (s_0 - s_T)(1 - t/T_end)^3) with t counted from `start`.
    """
    if step < start:
        return 0.0
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def is_pruning_step(step: int, start: int, end: int, frequency: int) -> bool:
    """Prune every `frequency` steps from `start`, and always at `end` so the target is hit exactly."""
    return start <= step <= end and ((step - start) % frequency == 0 or step == end)


def pruning_window(
    total_steps: int,
    start_fraction: float,
    end_fraction: float,
    start_step: int | None = None,
    end_step: int | None = None,
) -> tuple[int, int]:
    """(start, end) steps of gradual pruning in a round of `total_steps`: explicit steps, else fractions;
    never before step 1 or past the last step, and end >= start."""
    start = start_step if start_step is not None else round(start_fraction * total_steps)
    end = end_step if end_step is not None else round(end_fraction * total_steps)
    start = max(1, start)
    return start, min(max(start, end), total_steps)


@dataclass(frozen=True)
class GradualSchedule:
    """When gradual pruning prunes inside a round, and to what (the one copy used by `mp` and by the MP rounds
    of `slt_mp`/`mp_slt`): every `frequency` steps from the start step to the end step (steps, or fractions of
    the round's steps when the step is not given), along the cubic schedule from s_0 to s_T."""

    frequency: int = 50
    start_fraction: float = 0.2
    end_fraction: float = 0.7
    start_step: int | None = None
    end_step: int | None = None

    def __post_init__(self) -> None:
        if self.frequency < 1:
            raise UserError(f"pruner.frequency must be >= 1, got {self.frequency}")
        if not 0.0 <= self.start_fraction <= self.end_fraction <= 1.0:
            raise UserError(
                f"need 0 <= start_fraction <= end_fraction <= 1, got {self.start_fraction}, {self.end_fraction}"
            )

    def window(self, total_steps: int) -> tuple[int, int]:
        return pruning_window(total_steps, self.start_fraction, self.end_fraction, self.start_step, self.end_step)

    def target(self, step: int, total_steps: int, initial: float, final: float) -> float | None:
        """The sparsity to prune to after `step`, or None when this is not a pruning step."""
        start, end = self.window(total_steps)
        if not is_pruning_step(step, start, end, self.frequency):
            return None
        return cubic_sparsity(step, initial, final, start, end)

    def is_final(self, step: int, total_steps: int) -> bool:
        """The mask no longer changes from the end of the ramp on (for a fixed `total_steps`; during training,
        where the total may be re-estimated, `Progress.final_done` says it)."""
        return step >= self.window(total_steps)[1]

    def due(self, step: int, total_steps: int, initial: float, final: float, progress: Progress) -> float | None:
        """The sparsity to prune to after `step` during training, or None; records what fired in `progress`.

        As `target`, except that the events do not wait for `step == X` while `total_steps` may move (a time
        budget re-estimates it every step): the final pruning fires once, at the first step at or past the end of
        the ramp, however the window moved, and a step never prunes twice (gradient accumulation calls every
        batch with the same optimizer step)."""
        if progress.final_done or step == progress.last_pruned:
            return None
        start, end = self.window(total_steps)
        if step >= end:
            progress.final_done = True
            target: float | None = final
        elif step >= start and (step - start) % self.frequency == 0:
            target = cubic_sparsity(step, initial, final, start, end)
        else:
            return None
        progress.last_pruned = step
        return target


@dataclass
class Progress:
    """What a round's one-off step events have done: the last step that pruned, whether the final pruning (to the
    round's target) happened, whether θ_t was captured. Each event fires once, when its condition first holds,
    however the round's total steps are re-estimated. Kept in every checkpoint (the pruner's `pruner_state`), so
    that a resumed round neither repeats nor skips them."""

    last_pruned: int = -1
    final_done: bool = False
    captured: bool = False

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Progress:
        return cls(**state) if state else cls()
