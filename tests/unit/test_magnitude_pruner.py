import itertools

import pytest

from prunelab.models import Transformer
from prunelab.pruning import MagnitudePruner


def test_gradual_pruning_follows_the_schedule(tiny_model: Transformer) -> None:
    total = 100
    pruner = MagnitudePruner(sparsity=0.8, frequency=10, start_fraction=0.2, end_fraction=0.7)
    pruner.attach(tiny_model)
    seen = []
    for step in range(1, total + 1):
        pruner.on_step_end(tiny_model, step, total)
        seen.append(pruner.report(tiny_model)["sparsity"]["overall"])
        assert pruner.mask_is_final(step, total) == (step >= 70)
    assert seen[18] == 0.0  # step 19: before the start
    assert seen[19] == pytest.approx(0.0, abs=1e-3)  # step 20: s_0 = 0
    assert seen[39] == pytest.approx(0.8 - 0.8 * (1 - 20 / 50) ** 3, abs=2e-3)  # step 40
    assert seen[69] == pytest.approx(0.8, abs=1e-3)  # step 70: the target
    assert seen[-1] == seen[69]  # and it stays there
    assert all(a <= b for a, b in itertools.pairwise(seen))


def test_explicit_steps_override_fractions() -> None:
    p = MagnitudePruner(sparsity=0.5, start_step=5, end_step=50)
    assert p.schedule.window(1000) == (5, 50)
    assert p.schedule.window(30) == (5, 30)  # never past the last step
