"""Sparsity schedules."""

from __future__ import annotations


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
