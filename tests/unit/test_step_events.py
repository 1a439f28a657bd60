"""One-off step events under a moving step total (issue 24, defect 2). Under `trainer.max_time` the round's total
steps are re-estimated every step; an event that waits for `step == X(total)` can then be jumped over. Gradual
magnitude pruning's final pruning and SLT's θ_t capture must each fire once, when their condition first holds."""

from __future__ import annotations

import pytest
import torch

from prunelab.models import Transformer
from prunelab.pruning import MagnitudePruner, StabilizedLotteryTicketPruner


def total_that_drops(step: int) -> int:
    """The issue's failing input: an estimate of 1,000 steps that drops to 990 at step 700."""
    return 1000 if step < 700 else 990


def drive(model: Transformer, pruner, total_of, last: int, seed: int = 0) -> list[float]:
    """Simulated optimizer steps 1..last with the pruner's hooks, as the task calls them; the masked fraction after
    each step."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(1, last + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        pruner.on_step_end(model, step, total_of(step))
        pruner.apply_masks()
        out.append(pruner.masked_fraction())
    return out


def test_gradual_pruning_reaches_its_target_when_the_total_drops_past_the_end(tiny_model: Transformer) -> None:
    pruner = MagnitudePruner(sparsity=0.9, frequency=100, start_fraction=0.2, end_fraction=0.7)
    pruner.attach(tiny_model)
    levels = drive(tiny_model, pruner, total_that_drops, 990)
    # the ramp ends at 0.7 x 990 = 693, which step 700 has already passed: the final pruning fires at step 700;
    # before it, the last pruning was at step 600, to 0.9 (1 - 0.2^3) = 0.8928 (where it used to end)
    assert levels[699 - 1] == pytest.approx(0.9 * (1 - 0.2**3), abs=2e-3)
    assert levels[700 - 1] == pytest.approx(0.9, abs=2e-3)
    assert levels[-1] == pytest.approx(0.9, abs=2e-3)
    assert pruner.mask_is_final(700, 990)


def test_mask_is_final_only_once_the_final_pruning_happened(tiny_model: Transformer) -> None:
    pruner = MagnitudePruner(sparsity=0.9, frequency=100, start_fraction=0.2, end_fraction=0.7)
    pruner.attach(tiny_model)
    drive(tiny_model, pruner, total_that_drops, 699)
    # at step 699 the (re-estimated) window already ended at 693, but the target was not pruned to yet
    assert not pruner.mask_is_final(699, 990)
    pruner.on_step_end(tiny_model, 700, 990)  # the next step fires the final pruning
    assert pruner.mask_is_final(700, 990)


def test_the_final_pruning_fires_once(tiny_model: Transformer) -> None:
    """Gradient accumulation calls every batch with the same optimizer step; the final event never repeats."""
    pruner = MagnitudePruner(sparsity=0.5, frequency=5, start_fraction=0.2, end_fraction=0.5)
    pruner.attach(tiny_model)
    calls = []
    original = pruner.prune_to
    pruner.prune_to = lambda model, s: (calls.append(s), original(model, s))  # type: ignore[method-assign]
    for step in (1, 1, 2, 2, 3, 3, 5, 5, 6, 10, 10, 11, 12):
        pruner.on_step_end(tiny_model, step, 20)
    # window 4..10: prunes at 4 (not reached), 9 (not reached) and at the first step >= 10, once each
    assert calls == [pytest.approx(0.5)], calls


def test_slt_captures_theta_t_when_the_total_drops_past_the_rewind_step(tiny_model: Transformer) -> None:
    """rewind_fraction 0.05: θ_t at step 50 of 1,000, but the estimate drops to 980 at step 50 (-> step 49)."""
    pruner = StabilizedLotteryTicketPruner(sparsity=0.5, levels=[0.5], rewind_fraction=0.05)
    pruner.attach(tiny_model)
    pruner.on_round_start(tiny_model, 0)
    theta_0 = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    seen = {}
    for step in range(1, 101):
        with torch.no_grad():
            for p in tiny_model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        pruner.on_step_end(tiny_model, step, 1000 if step < 50 else 980)
        if step == 50:
            seen = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    snap = pruner.snapshot("early")
    name = "enc.0.ff.fc1.weight"
    assert not torch.equal(snap[name], theta_0[name])  # not silently θ_0 (SLT would become LT)
    torch.testing.assert_close(snap[name], seen[name])  # the weights after step 50, the first step >= 49


def test_progress_survives_a_checkpoint(tiny_model: Transformer) -> None:
    pruner = MagnitudePruner(sparsity=0.9, frequency=50)
    pruner.attach(tiny_model)
    drive(tiny_model, pruner, lambda s: 100, 100)
    assert pruner.progress.final_done
    state = pruner.checkpoint_state()
    fresh = MagnitudePruner(sparsity=0.9, frequency=50)
    fresh.attach(tiny_model)
    fresh.load_checkpoint_state(state)
    assert fresh.progress == pruner.progress and fresh.mask_is_final(100, 100)
