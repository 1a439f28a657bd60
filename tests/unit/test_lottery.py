"""LT/SLT/CLT/SLT-MP/MP-SLT against their definitions (Brix, Bahar & Ney 2020), with training simulated by
random weight updates between the pruner's hooks, exactly where Lightning would call them."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.errors import UserError
from prunelab.models import Transformer
from prunelab.pruning import (
    ConstantLotteryTicketPruner,
    LotteryTicketPruner,
    MPSLTPruner,
    RoundPruner,
    SLTMPPruner,
    StabilizedLotteryTicketPruner,
    iterative_levels,
)
from prunelab.pruning.masks import prunable_weights

STEPS = 20  # per round; θ_t is taken at 5% -> step 1


def train_round(model: Transformer, pruner: RoundPruner, r: int, seen: dict | None = None) -> None:
    """One simulated round: rewind/mask at the start, noisy 'optimizer steps', the pruner's step hooks."""
    pruner.on_round_start(model, r)
    if seen is not None:
        seen[r] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen[f"mask_{r}"] = {n: m.bool().clone() for n, m in pruner.masks.items()}
    g = torch.Generator().manual_seed(100 + r)
    for step in range(1, STEPS + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        pruner.on_step_end(model, step, STEPS)
        pruner.apply_masks()
        if seen is not None and step == pruner.rewind_step_of(STEPS):
            seen[f"theta_t_{r}"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner.on_round_end(model, r)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.9, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9]),
        (0.98, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98]),
        (0.5, [0.1, 0.2, 0.3, 0.4, 0.5]),
        (0.55, [0.1, 0.2, 0.3, 0.4, 0.5, 0.55]),
    ],
)
def test_level_schedule_matches_the_paper(target: float, expected: list[float]) -> None:
    assert iterative_levels(target) == pytest.approx(expected)


def test_level_schedule_above_an_intermediate_sparsity() -> None:
    assert iterative_levels(0.9, start=0.6) == pytest.approx([0.7, 0.8, 0.85, 0.9])


def test_lt_rewinds_survivors_to_theta_0_in_the_weights_themselves(tiny_model: Transformer) -> None:
    theta_0 = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    pruner = LotteryTicketPruner(sparsity=0.5, levels=[0.3, 0.5])
    pruner.attach(tiny_model)
    seen: dict = {}
    for r in range(pruner.rounds):
        train_round(tiny_model, pruner, r, seen)
    assert pruner.rounds == 3  # dense + two levels
    for r in (1, 2):
        start = seen[r]
        for name in prunable_weights(tiny_model):
            mask = seen[f"mask_{r}"][name]
            assert abs(float((~mask).float().mean()) - (0.3 if r == 1 else 0.5)) < 0.01
            assert torch.equal(start[name][mask], theta_0[name][mask]), name  # exactly θ_0
            assert bool((start[name][~mask] == 0).all()), name  # pruned ones are zero
        for name in ("enc.0.sa_res.norm.weight", "dec.1.ff.fc1.bias"):
            assert torch.equal(start[name], theta_0[name])  # everything else rewinds too


def test_slt_rewinds_to_theta_t_of_the_latest_round(tiny_model: Transformer) -> None:
    pruner = StabilizedLotteryTicketPruner(sparsity=0.5, levels=[0.3, 0.5])
    pruner.attach(tiny_model)
    seen: dict = {}
    for r in range(pruner.rounds):
        train_round(tiny_model, pruner, r, seen)
    assert pruner.rewind_step_of(STEPS) == 1
    mask = {n: m.bool() for n, m in pruner.masks.items()}
    for name in prunable_weights(tiny_model):
        # round 2 started from θ_t of round 1 (the latest), not of round 0
        assert torch.equal(seen[2][name][mask[name]], seen["theta_t_1"][name][mask[name]]), name
        assert not torch.equal(seen[2][name][mask[name]], seen["theta_t_0"][name][mask[name]]), name


def test_slt_rewind_from_first_round(tiny_model: Transformer) -> None:
    pruner = StabilizedLotteryTicketPruner(sparsity=0.5, levels=[0.3, 0.5], rewind_from="first")
    pruner.attach(tiny_model)
    seen: dict = {}
    for r in range(pruner.rounds):
        train_round(tiny_model, pruner, r, seen)
    mask = {n: m.bool() for n, m in pruner.masks.items()}
    for name in prunable_weights(tiny_model):
        assert torch.equal(seen[2][name][mask[name]], seen["theta_t_0"][name][mask[name]]), name


@pytest.mark.parametrize("random_signs", [False, True])
def test_clt_kept_weights_are_plus_minus_alpha(tiny_model: Transformer, random_signs: bool) -> None:
    pruner = ConstantLotteryTicketPruner(sparsity=0.5, levels=[0.5], random_signs=random_signs)
    pruner.attach(tiny_model)
    seen: dict = {}
    for r in range(pruner.rounds):
        train_round(tiny_model, pruner, r, seen)
    flipped = kept_total = 0
    for name, w in prunable_weights(tiny_model).items():
        fan_out, fan_in = w.shape
        alpha = math.sqrt(6.0 / (fan_in + fan_out))
        mask = pruner.masks[name].bool()
        start = seen[1][name]
        assert torch.allclose(start[mask].abs(), torch.full_like(start[mask], alpha)), name
        assert bool((start[~mask] == 0).all()), name
        theta_t_sign = torch.sign(seen["theta_t_0"][name][mask])
        flipped += int((torch.sign(start[mask]) != theta_t_sign).sum())
        kept_total += int(mask.sum())
    if random_signs:
        assert 0.45 < flipped / kept_total < 0.55  # about half disagree with θ_t
    else:
        assert flipped == 0


def test_masks_only_shrink_across_rounds(tiny_model: Transformer) -> None:
    pruner = StabilizedLotteryTicketPruner(sparsity=0.8)
    pruner.attach(tiny_model)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    for r in range(pruner.rounds):
        train_round(tiny_model, pruner, r)
        for n, m in pruner.masks.items():
            assert bool((m <= previous[n]).all()), (r, n)
            previous[n] = m.clone()
    assert pruner.report(tiny_model)["sparsity"]["overall"] == pytest.approx(0.8, abs=1e-3)


def test_slt_mp_starts_mp_at_60_with_the_slt_mask(tiny_model: Transformer) -> None:
    pruner = SLTMPPruner(sparsity=0.9)
    pruner.attach(tiny_model)
    assert [r.sparsity for r in pruner.plan] == [0.0, 0.5, 0.6, 0.9]
    assert pruner.plan[-1].mp_from == 0.6 and pruner.plan[-1].rewind == "early"
    seen: dict = {}
    for r in range(3):
        train_round(tiny_model, pruner, r, seen)
    slt_mask = {n: m.clone() for n, m in pruner.masks.items()}
    assert pruner.report(tiny_model)["sparsity"]["overall"] == pytest.approx(0.6, abs=1e-3)
    pruner.on_round_start(tiny_model, 3)
    for name, w in prunable_weights(tiny_model).items():
        keep = slt_mask[name].bool()
        assert torch.equal(w[keep], seen["theta_t_2"][name][keep]), name  # from θ_t, SLT mask applied
    start, end = pruner.schedule.window(STEPS)
    pruner.on_step_end(tiny_model, start, STEPS)
    assert pruner.report(tiny_model)["sparsity"]["overall"] == pytest.approx(0.6, abs=1e-3)  # s_0 = 0.6
    for name in slt_mask:
        assert bool((pruner.masks[name] <= slt_mask[name]).all())
    pruner.on_step_end(tiny_model, end, STEPS)
    assert pruner.report(tiny_model)["sparsity"]["overall"] == pytest.approx(0.9, abs=1e-3)


def test_levels_that_equal_a_run_at_that_target() -> None:
    lt = LotteryTicketPruner(sparsity=0.9)
    assert all(lt.same_as_targeting(i) for i in range(lt.rounds))  # LT to 0.9 passes through LT to 0.5
    slt_mp = SLTMPPruner(sparsity=0.9)
    assert [slt_mp.same_as_targeting(i) for i in range(4)] == [True, True, True, True]
    mp_slt = MPSLTPruner(sparsity=0.9)
    assert mp_slt.same_as_targeting(2)  # MP to 0.6, SLT 0.7, 0.8 = MP-SLT to 0.8


def test_mp_slt_plan() -> None:
    pruner = MPSLTPruner(sparsity=0.9, intermediate_sparsity=0.6)
    assert [(r.sparsity, r.mp_from, r.rewind) for r in pruner.plan] == [
        (0.6, 0.0, "none"),
        (0.7, None, "early"),
        (0.8, None, "early"),
        (0.85, None, "early"),
        (0.9, None, "early"),
    ]


def test_slt_mp_at_or_below_60_is_slt_only() -> None:
    assert [r.sparsity for r in SLTMPPruner(sparsity=0.5).plan] == [0.0, 0.5]
    assert [r.sparsity for r in SLTMPPruner(sparsity=0.6).plan] == [0.0, 0.5, 0.6]


def test_bad_levels_rejected() -> None:
    with pytest.raises(UserError, match="must end at the target"):
        LotteryTicketPruner(sparsity=0.9, levels=[0.5, 0.8])
    with pytest.raises(UserError, match="must increase"):
        LotteryTicketPruner(sparsity=0.5, levels=[0.6, 0.5])
