import itertools

import pytest

from prunelab.pruning.schedule import cubic_sparsity, is_pruning_step


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.0),  # before the start: dense
        (99, 0.0),
        (100, 0.1),  # s_0 at the start
        # s_t = s_f + (s_0 - s_f)(1 - p)^3, s_0 = 0.1, s_f = 0.9, start 100, end 500
        (200, 0.9 + (0.1 - 0.9) * 0.75**3),  # p = 0.25 -> 0.5625
        (300, 0.9 - 0.8 * 0.125),  # p = 0.5 -> 0.8
        (400, 0.9 - 0.8 * 0.25**3),  # p = 0.75 -> 0.8875
        (500, 0.9),
        (10_000, 0.9),
    ],
)
def test_cubic_schedule_hand_values(step: int, expected: float) -> None:
    assert cubic_sparsity(step, 0.1, 0.9, 100, 500) == pytest.approx(expected, abs=1e-12)


def test_cubic_schedule_matches_design_form() -> None:
    # DESIGN.md writes it as s_t = s_T + min(0, (s_0 - s_T)(1 - t/T_end)^3) with t counted from the start
    s0, sT, T = 0.0, 0.95, 1000
    for t in range(0, 1500, 37):
        design = sT + min(0.0, (s0 - sT) * (1 - t / T) ** 3)
        assert cubic_sparsity(t, s0, sT, 0, T) == pytest.approx(design, abs=1e-12)


def test_schedule_is_monotone() -> None:
    values = [cubic_sparsity(t, 0.0, 0.9, 10, 90) for t in range(120)]
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_pruning_steps_every_k_and_at_end() -> None:
    steps = [t for t in range(0, 200) if is_pruning_step(t, 10, 95, 20)]
    assert steps == [10, 30, 50, 70, 90, 95]
