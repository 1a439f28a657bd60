"""AttendOut's G-Net: decisions, and the REINFORCE gradient against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.pruning.attendout import GNet, RewardBaseline, log_prob, reinforce_loss


def test_decisions_shapes_and_log_probability() -> None:
    torch.manual_seed(0)
    g = GNet(d_model=8, n_layers=3)
    x = torch.randn(4, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    keep, lp = g.sample(x, mask, torch.Generator().manual_seed(1))
    assert keep.shape == (4, 3) and set(keep.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(g.keep_logits(x, mask))
    by_hand = (keep * p.log() + (1 - keep) * (1 - p).log()).sum(1)
    assert torch.allclose(lp, by_hand, atol=1e-6)
    # padding does not change a sentence's decisions' probabilities
    alone = torch.sigmoid(g.keep_logits(x[1:2, :3], mask[1:2, :3]))
    assert torch.allclose(alone, p[1:2], atol=1e-6)


def test_reinforce_gradient_matches_the_hand_computation() -> None:
    """For Bernoulli(sigmoid(z)), d log pi / dz = keep - p; with the read-out bias shared by every layer,
    dL/d bias = -(r - b) * mean_x sum_l (keep_l - p_l)."""
    torch.manual_seed(3)
    g = GNet(d_model=6, n_layers=2).double()
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    logits = g.keep_logits(x, mask)
    keep = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    reward, baseline = 1.0, 0.25
    reinforce_loss(log_prob(logits, keep), reward, baseline).backward()
    p = torch.sigmoid(logits.detach())
    by_hand = -(reward - baseline) * float((keep - p).sum(1).mean())
    assert float(g.readout.bias.grad) == pytest.approx(by_hand, rel=1e-10)


def test_baseline_is_a_moving_average() -> None:
    b = RewardBaseline(beta=0.5)
    assert [b.update(r) for r in (1, 1, -1)] == [0.5, 0.75, -0.125]
    assert math.isclose(RewardBaseline().update(1.0), 0.1)
