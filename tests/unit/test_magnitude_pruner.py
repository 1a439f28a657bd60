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


@pytest.mark.parametrize("text", ["2:4", "4:8"])
def test_gradual_nm_pruning_ends_at_an_exact_nm_mask(tiny_model: Transformer, text: str) -> None:
    """pattern=N:M: every pruning step removes the smallest weights among each group's M - N smallest (groups of M
    consecutive inputs), so the schedule reaches its intermediate sparsities per matrix and ends at exact N:M."""
    import torch

    from prunelab.errors import UserError

    n, m = map(int, text.split(":"))
    pruner = MagnitudePruner(sparsity=1 - n / m, frequency=10, start_fraction=0.2, end_fraction=0.7, pattern=text)
    pruner.attach(tiny_model)
    total = 100
    for step in range(1, total + 1):
        before = {k: v.clone() for k, v in pruner.masks.items()}
        weights = {k: w.detach().abs().clone() for k, w in pruner._weights.items()}
        pruner.on_step_end(tiny_model, step, total)
        for k, mask in pruner.masks.items():
            new = before[k].bool() & ~mask.bool()  # removed at this step
            if not new.any():
                continue
            groups = weights[k].view(mask.shape[0], -1, m)
            # each newly removed weight is among the M - N smallest of its group (earlier removals first)
            ranked = torch.where(before[k].bool(), weights[k], -1.0).view_as(groups)
            rank = ranked.argsort(-1).argsort(-1).view_as(mask)
            assert bool((rank[new] < m - n).all())
            assert bool((mask.view_as(groups).sum(-1) >= n).all())  # never fewer than N kept in a group
    for k, mask in pruner.masks.items():
        assert bool((mask.view(mask.shape[0], -1, m).sum(-1) == n).all()), k  # exactly N of every M kept
    assert pruner.report(tiny_model)["sparsity"]["overall"] == pytest.approx(1 - n / m)
    with pytest.raises(UserError, match=r"sparsity=0\.5"):
        MagnitudePruner(sparsity=0.6, pattern=text)


@pytest.mark.parametrize("text", ["2:4", "4:8"])
def test_random_nm_pruning_ends_at_an_exact_random_nm_mask(tiny_model: Transformer, text: str) -> None:
    """pruner=random pattern=N:M: MP's schedule with random draws ends at exact N:M, as MP does (before, the draws
    were ranked over whole matrices: groups kept anywhere from 0 to M weights), and the kept weights are the random
    draw's, not the largest magnitudes."""
    import torch

    from prunelab.pruning.random import RandomPruner

    n, m = map(int, text.split(":"))
    pruner = RandomPruner(sparsity=1 - n / m, seed=3, frequency=10, start_fraction=0.2, end_fraction=0.7, pattern=text)
    pruner.attach(tiny_model)
    original = {k: w.detach().abs().clone() for k, w in pruner._weights.items()}  # pruning zeroes the masked ones
    for step in range(1, 101):
        pruner.on_step_end(tiny_model, step, 100)
    agree = []
    for k, mask in pruner.masks.items():
        assert bool((mask.view(mask.shape[0], -1, m).sum(-1) == n).all()), k  # exactly N of every M kept
        w = original[k].view(mask.shape[0], -1, m)
        top = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.topk(n, -1).indices, True)
        agree.append(float((top.view_as(mask) == mask.bool()).float().mean()))
    assert sum(agree) / len(agree) < 0.9  # not magnitude's N:M mask (random would agree on about half the entries)
