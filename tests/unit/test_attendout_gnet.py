"""AttendOut's G-Net: decisions, and the REINFORCE gradient against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from prunelab.pruning.attendout import GNet, RewardBaseline, example_rewards, log_prob, reinforce_loss, verdict
from tests.unit.attendout_task import with_task


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


def _tiny_classifier(dropout: float = 0.1) -> torch.nn.Module:
    from prunelab.models import build_classifier

    torch.manual_seed(0)
    return build_classifier(num_classes=2, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dropout=dropout)


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 30, (6, 7), generator=g)
    src[:, 0] = 1
    src[2, 5:] = 0
    return {"src": src, "label": torch.randint(0, 2, (6,), generator=g)}


def test_the_a_d_g_cycle_follows_algorithm_1() -> None:
    import torch.nn.functional as F

    from prunelab.pruning.attendout import AttendOutPruner

    d = _tiny_classifier()
    pruner = AttendOutPruner(every=100, seed=0)
    with_task(d, pruner, lr=1e-2)
    d0 = {k: v.clone() for k, v in d.state_dict().items()}
    g0 = [p.clone() for p in pruner.g_net.parameters()]
    batches = [_batch(s) for s in range(3)]
    for b in batches:
        pruner.on_batch(d, b)
    # D is untouched by the pruner between cycles (Lightning trains it)
    assert all(torch.equal(v, d0[k]) for k, v in d.state_dict().items())
    assert any(
        not torch.equal(a, b) for a, b in zip(pruner.a_net.parameters(), d.parameters(), strict=True)
    )  # A trained
    with torch.no_grad():  # who wins, computed independently on the cache
        pruner.a_net.eval()
        a_loss = sum(float(F.cross_entropy(pruner.a_net(b["src"], k), b["label"])) for b, k, _ in pruner._cache)
        d.eval()
        d_loss = sum(float(F.cross_entropy(d(b["src"]), b["label"])) for b, _, _ in pruner._cache)
        pruner.a_net.train()
        d.train()
    reward = pruner.cycle(d)
    assert reward == (1.0 if a_loss < d_loss else -1.0)
    assert pruner._cache == [] and pruner.baseline.value == pytest.approx(0.1 * reward)
    assert any(not torch.equal(a, b) for a, b in zip(pruner.g_net.parameters(), g0, strict=True))  # G took a step
    for a, b in zip(pruner.a_net.parameters(), d.parameters(), strict=True):
        assert torch.equal(a, b)  # D <- A


def test_cycle_runs_every_t_batches() -> None:
    from prunelab.pruning.attendout import AttendOutPruner

    d = _tiny_classifier()
    pruner = AttendOutPruner(every=2, seed=0)
    with_task(d, pruner)
    for s in range(5):
        pruner.on_batch(d, _batch(s))
    assert len(pruner.rewards) == 2 and len(pruner._cache) == 1


def test_checkpoint_state_resumes_mid_cycle_exactly(tmp_path) -> None:
    """A and G weights, their optimizers, the step count, rewards and the batches cached since the last
    cycle go through a weights_only checkpoint; the resumed pruner continues exactly like the original
    (without dropout, whose global random stream no resume restores, as in classifier_tiny)."""
    from prunelab.pruning.attendout import AttendOutPruner

    def fresh() -> tuple[torch.nn.Module, AttendOutPruner]:
        d = _tiny_classifier(dropout=0.0)
        p = AttendOutPruner(every=3, seed=0)
        with_task(d, p, lr=1e-2)
        return d, p

    d, pruner = fresh()
    for s in range(4):  # one cycle done, one batch cached
        pruner.on_batch(d, _batch(s))
    path = tmp_path / "state.pt"
    torch.save({"pruner_state": pruner.checkpoint_state(), "d": d.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    d2, resumed = fresh()
    d2.load_state_dict(saved["d"])
    resumed.load_checkpoint_state(saved["pruner_state"])
    assert resumed.rewards == pruner.rewards and len(resumed._cache) == 1
    for s in range(4, 9):  # two more cycles, one of them completing the cached batch's
        pruner.on_batch(d, _batch(s))
        resumed.on_batch(d2, _batch(s))
    assert resumed.rewards == pruner.rewards and len(pruner.rewards) == 3
    for a, b in zip(pruner.a_net.parameters(), resumed.a_net.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(pruner.g_net.parameters(), resumed.g_net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed._opts["a"].state_dict()["state"][0]["step"] == pruner._opts["a"].state_dict()["state"][0]["step"]


def _learn_policy(mode: str, drop_bonus: float, cycles: int = 150, seed: int = 0) -> list[float]:
    """REINFORCE on a planted problem, with the library's G-Net, rewards and loss: dropping layer 0's map costs
    A-Net 0.5 nats on that example, dropping any other map costs nothing; both nets' per-example losses carry
    independent noise (std 0.3). The A-vs-D verdict is on the summed losses, as in a cycle.
    -> G-Net's mean keep probability per layer after `cycles` cycles of 5 batches of 16."""
    torch.manual_seed(seed)
    layers, width, length = 4, 16, 6
    cost = torch.tensor([0.5, 0.0, 0.0, 0.0])
    g = GNet(d_model=width, n_layers=layers, initial_keep=0.9)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    baseline = RewardBaseline(0.9)
    mask = torch.ones(16, length, dtype=torch.bool)
    for _ in range(cycles):
        xs = [torch.randn(16, length, width) for _ in range(5)]
        with torch.no_grad():
            keeps = [g.sample(x, mask)[0] for x in xs]
        keep = torch.cat(keeps)
        a_loss = ((1 - keep) * cost).sum(1) + 0.3 * torch.randn(len(keep))
        d_loss = 0.3 * torch.randn(len(keep))
        sign = verdict(float(a_loss.sum()), float(d_loss.sum()))
        reward = example_rewards(a_loss, d_loss, keep, mode, drop_bonus, sign)
        log_probs = torch.cat([log_prob(g.keep_logits(x, mask), k) for x, k in zip(xs, keeps, strict=True)])
        opt.zero_grad()
        reinforce_loss(log_probs, reward, baseline.value).backward()
        opt.step()
        baseline.update(float(torch.as_tensor(reward).mean()))
    with torch.no_grad():
        big = torch.ones(512, length, dtype=torch.bool)
        return torch.sigmoid(g.keep_logits(torch.randn(512, length, width), big)).mean(0).tolist()


def test_example_rewards_by_hand() -> None:
    a = torch.tensor([0.2, 1.0, 0.1])
    d = torch.tensor([0.5, 0.4, 0.1])
    keep = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert example_rewards(a, d, keep, "sign", 0.0, sign=-1.0) == -1.0
    assert example_rewards(a, d, keep, "sign", 0.0, sign=0.0) == 0.0  # a tie: neither arm won
    assert torch.allclose(example_rewards(a, d, keep, "margin", 0.0, 1.0), torch.tensor([0.3, -0.6, 0.0]))
    assert torch.allclose(example_rewards(a, d, keep, "margin", 0.1, 1.0), torch.tensor([0.4, -0.4, 0.0]))
    assert torch.allclose(example_rewards(a, d, keep, "sign", 0.5, 1.0), torch.tensor([1.5, 2.0, 1.0]))
    assert (verdict(1.0, 2.0), verdict(2.0, 1.0), verdict(1.5, 1.5)) == (1.0, -1.0, 0.0)


def test_margin_reward_with_a_drop_bonus_keeps_the_costly_map_and_drops_the_free_ones() -> None:
    keep = _learn_policy("margin", drop_bonus=0.05)
    assert keep[0] > 0.9, keep  # dropping it costs 0.5 nats, more than the 0.05 bonus
    assert max(keep[1:]) < 0.1, keep  # free: the bonus wins


def test_sign_reward_alone_learns_to_keep_every_map_and_with_a_bonus_drops_every_map() -> None:
    """Why experiment=wu2022 uses reward=margin: the +/-1 reward (as the paper is summarised in DESIGN.md) has
    nothing pushing towards dropping, and a bonus added to it saturates (A-Net always loses, r = -1)."""
    assert min(_learn_policy("sign", drop_bonus=0.0)) > 0.5  # nothing falls below the pruning threshold
    assert max(_learn_policy("sign", drop_bonus=0.05 * 4)) < 0.1


def test_a_net_starts_from_the_weights_the_round_starts_with() -> None:
    """`ckpt=` loads trained weights after the pruner is attached: A-Net must start from them, or the first
    D <- A would throw the trained weights away."""
    from prunelab.pruning.attendout import AttendOutPruner

    d = _tiny_classifier()
    pruner = AttendOutPruner(every=1, seed=0)
    with_task(d, pruner, lr=1e-3)
    trained = _tiny_classifier()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    d.load_state_dict(trained.state_dict())  # what ckpt= does after attach
    assert not torch.equal(pruner.a_net.enc[0].sa.q_proj.weight, d.enc[0].sa.q_proj.weight)
    pruner.on_round_start(d, 0)
    for a, b in zip(pruner.a_net.state_dict().values(), d.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    pruner.on_batch(d, _batch(0))  # a cycle, then A's step: D <- A stays close to the trained weights
    with torch.no_grad():
        drift = max(float((a - b).abs().max()) for a, b in zip(d.parameters(), trained.parameters(), strict=True))
    assert drift < 0.05
