"""AttendOut (Wu et al.) pinned by spying on what each network is called with:

- A-Net trains under G-Net's sampled keep/drop decisions (its forward in on_batch gets them as map_keep);
- in the cycle D-Net is scored with full attention (no map_keep) and A-Net with the cached decisions, before
  A-Net's step on the cycle's last batch;
- the REINFORCE step uses the baseline from BEFORE the current reward (b_k = beta b_{k-1} + (1 - beta) r_k);
- G-Net starts at its configured keep probability;
- at the round's end every layer whose mean keep probability over the validation EXAMPLES is below the
  threshold is made uniform (a threshold that forces nothing still prunes what G-Net learned to drop),
  the others are left as they are.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import prunelab.pruning.attendout as attendout
from prunelab.models import build_classifier
from prunelab.models.addressing import component
from prunelab.pruning.attendout import AttendOutPruner
from tests.unit.attendout_task import LAYERS, batch, classifier, with_task


def spy_forward(net: torch.nn.Module, calls: list[Any]) -> None:
    """Record the map_keep argument of every forward call of `net` (None when not given)."""
    original = net.forward

    def forward(src: torch.Tensor, map_keep: torch.Tensor | None = None, types: Any = None) -> torch.Tensor:
        calls.append(None if map_keep is None else map_keep.detach().clone())
        return original(src, map_keep, types)

    net.forward = forward  # type: ignore[method-assign]


def spy_sample(pruner: AttendOutPruner, drawn: list[torch.Tensor]) -> None:
    original = pruner.g_net.sample

    def sample(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keep, lp = original(*args, **kwargs)
        drawn.append(keep.clone())
        return keep, lp

    pruner.g_net.sample = sample  # type: ignore[method-assign]


def test_a_net_trains_under_g_nets_decisions_and_d_net_is_scored_with_full_attention() -> None:
    d = classifier()
    # initial_keep=0.5: both decisions are common, so "all ones" (= no decisions) cannot pass for them
    pruner = AttendOutPruner(every=3, initial_keep=0.5, seed=0)
    with_task(d, pruner, lr=1e-2)
    a_calls: list[Any] = []
    d_calls: list[Any] = []
    drawn: list[torch.Tensor] = []
    spy_forward(pruner.a_net, a_calls)
    spy_forward(d, d_calls)
    spy_sample(pruner, drawn)
    for s in range(2):
        pruner.on_batch(d, batch(s))
    assert len(drawn) == 2 and len(a_calls) == 2 and d_calls == []
    for keep, given in zip(drawn, a_calls, strict=True):
        assert keep.shape == (6, LAYERS)  # one decision per example and attention layer
        assert given is not None and torch.equal(given, keep)  # A-Net's training forward got them
    decisions = torch.cat(drawn)
    assert 0 < float(decisions.mean()) < 1  # guard: some maps dropped, some kept
    a_calls.clear()
    pruner.on_batch(d, batch(2))  # the third batch completes a cycle, run before A-Net's step on it
    *cycle_calls, train_call = a_calls
    assert torch.equal(train_call, drawn[2])
    assert len(cycle_calls) == 3 and all(torch.equal(c, k) for c, k in zip(cycle_calls, drawn, strict=True))
    assert len(d_calls) == 3 and all(c is None for c in d_calls)  # D: full attention, every cached batch


def test_reinforce_uses_the_baseline_from_before_the_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float]] = []
    original = attendout.reinforce_loss

    def spy(log_probs: torch.Tensor, reward: float, baseline: float) -> torch.Tensor:
        seen.append((reward, baseline))
        return original(log_probs, reward, baseline)

    monkeypatch.setattr(attendout, "reinforce_loss", spy)
    d = classifier()
    beta = 0.5
    pruner = AttendOutPruner(every=1, baseline_beta=beta, seed=0)
    with_task(d, pruner, lr=5e-2)
    for s in range(6):
        pruner.on_batch(d, batch(s))
    rewards = pruner.rewards
    assert len(rewards) == len(seen) == 6 and [r for r, _ in seen] == rewards
    b, expected = 0.0, []
    for r in rewards:  # b_0 = 0; cycle k uses b_{k-1}, then b_k = beta b_{k-1} + (1 - beta) r_k
        expected.append(b)
        b = beta * b + (1 - beta) * r
    assert [bl for _, bl in seen] == pytest.approx(expected, abs=1e-15)
    assert pruner.baseline.value == pytest.approx(b, abs=1e-15)
    assert seen[0][1] == 0.0 and seen[1][1] == pytest.approx(0.5 * rewards[0])


def test_reinforce_gradient_uses_the_old_baseline() -> None:
    """The G-Net step of a cycle: with logit_l = w . pooled_l + bias, the read-out bias gradient of
    -(r - b) mean_x sum_l log pi(keep_l | x) is -(r - b_old) * mean_x sum_l (keep_l - p_l)."""
    d = classifier()
    pruner = AttendOutPruner(every=2, initial_keep=0.5, baseline_beta=0.5, seed=0)
    with_task(d, pruner, lr=1e-2)
    pruner.baseline.value = 0.3  # as if after earlier cycles
    seen: dict[str, torch.Tensor] = {}
    cycle = pruner.cycle

    def spy_cycle(model: torch.nn.Module) -> float:
        with torch.no_grad():  # G-Net as the cycle finds it, on the cached inputs and decisions
            seen["p"] = torch.cat([torch.sigmoid(pruner.g_net.keep_logits(x, m)) for _, _, (x, m) in pruner._cache])
            seen["keep"] = torch.cat([k for _, k, _ in pruner._cache])
        return cycle(model)

    pruner.cycle = spy_cycle  # type: ignore[method-assign]
    pruner.on_batch(d, batch(0))
    pruner.on_batch(d, batch(1))
    (r,) = pruner.rewards
    expected = -(r - 0.3) * float((seen["keep"] - seen["p"]).sum(1).mean())
    assert seen["keep"].shape == (12, LAYERS)
    assert float(pruner.g_net.readout.bias.grad) == pytest.approx(expected, rel=1e-5)
    assert pruner.baseline.value == pytest.approx(0.5 * 0.3 + 0.5 * r)


@pytest.mark.parametrize("initial_keep", [0.5, 0.9, 0.97])
def test_g_net_starts_at_its_initial_keep_probability(initial_keep: float) -> None:
    d = classifier()
    pruner = AttendOutPruner(initial_keep=initial_keep)
    pruner.attach(d)
    src = torch.cat([batch(s, size=16, length=9)["src"] for s in range(4)])
    x, mask = pruner._inputs(d, src)
    with torch.no_grad():
        p = torch.sigmoid(pruner.g_net.keep_logits(x, mask))  # (64, LAYERS)
    assert p.shape == (64, LAYERS)
    assert float(p.mean()) == pytest.approx(initial_keep, abs=0.01)
    assert float((p - initial_keep).abs().max()) < 0.025  # every example and layer, not just on average


# --- the end of the round: what G-Net learned to drop is pruned ---------------------------------------------

# keep probabilities per layer by sentence length: 2 validation sentences of 3 tokens, 4 of 5 tokens
BY_LENGTH = {3: [0.2, 0.9, 0.9], 5: [0.2, 0.8, 0.33]}
MEANS = [0.2, (2 * 0.9 + 4 * 0.8) / 6, (2 * 0.9 + 4 * 0.33) / 6]  # per example: 0.2, 0.8333, 0.52


def val_batches() -> list[dict[str, torch.Tensor]]:
    short = batch(10, size=2, length=3)
    short["src"][:, :] = torch.tensor([[1, 5, 6], [1, 7, 8]])
    long = batch(11, size=4, length=5)
    long["src"][long["src"] == 0] = 9
    return [short, long]


def learned(pruner: AttendOutPruner) -> None:
    """G-Net as trained: its keep probabilities are the table above (by each sentence's real length)."""

    def keep_logits(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = torch.tensor([BY_LENGTH[int(n)] for n in mask.sum(1).tolist()], dtype=x.dtype)
        return torch.logit(p)

    pruner.g_net.keep_logits = keep_logits  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("threshold", "pruned"),
    [
        (0.5, ["enc.0.sa"]),  # the default threshold forces nothing: only what G-Net learned to drop
        (0.55, ["enc.0.sa", "enc.2.sa"]),  # the mean over examples (0.52), not over batches (0.615)
        (0.1, []),
        (0.9, ["enc.0.sa", "enc.1.sa", "enc.2.sa"]),
    ],
)
def test_round_end_prunes_the_layers_g_net_learned_to_drop(threshold: float, pruned: list[str]) -> None:
    d = classifier()
    pruner = AttendOutPruner(threshold=threshold)
    pruner.attach(d)
    pruner.use_data(SimpleNamespace(val_dataloader=val_batches))
    learned(pruner)
    before = copy.deepcopy(d).eval()
    pruner.on_round_end(d, 0)
    assert pruner.keep_probability.tolist() == pytest.approx(MEANS, abs=1e-6)
    names = [f"enc.{i}.sa" for i in range(LAYERS)]
    assert [n for n in names if component(d, n).uniform] == pruned
    for n in names:
        attn = component(d, n)
        assert (attn.q_proj is None and attn.k_proj is None) == (n in pruned)
    rep = pruner.report(d)["attendout"]
    assert rep["pruned_layers"] == pruned and rep["proportion_pruned"] == f"{len(pruned)}/{LAYERS}"
    # a uniform map is the dropped map: the pruned model computes what the dense one does with those maps off
    src = torch.cat([b["src"] for b in val_batches()[1:]])
    keep = torch.tensor([[0.0 if n in pruned else 1.0 for n in names]]).expand(src.size(0), -1)
    with torch.no_grad():
        torch.testing.assert_close(d.eval()(src), before(src, keep), rtol=1e-5, atol=1e-6)


def test_a_net_trains_on_the_tasks_loss_and_is_compared_on_plain_cross_entropy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A-Net's training loss is D-Net's (the task's label smoothing); the A-vs-D comparison scores every cached
    example by its plain cross-entropy. Token types (sentence pairs) reach A-Net and G-Net as they reach D-Net."""
    import torch.nn.functional as F

    calls: list[dict[str, Any]] = []
    original = F.cross_entropy

    def spy(logits: torch.Tensor, target: torch.Tensor, **kw: Any) -> torch.Tensor:
        calls.append({"grad": logits.requires_grad, **kw})
        return original(logits, target, **kw)

    torch.manual_seed(0)
    d = build_classifier(num_classes=2, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=LAYERS, dropout=0.0)
    d.cfg.type_vocab_size = 2  # a pair model: token types change the embeddings
    d.type_embed = torch.nn.Embedding(2, 16)
    pruner = AttendOutPruner(every=2, initial_keep=0.5, seed=0)
    with_task(d, pruner, SimpleNamespace(val_dataloader=val_batches), label_smoothing=0.3)
    types_seen: list[Any] = []
    original_forward = pruner.a_net.forward

    def a_forward(src: torch.Tensor, map_keep: Any = None, types: Any = None) -> torch.Tensor:
        types_seen.append(types)
        return original_forward(src, map_keep, types)

    pruner.a_net.forward = a_forward  # type: ignore[method-assign]
    monkeypatch.setattr(F, "cross_entropy", spy)
    batches = [batch(s) for s in range(2)]
    for b in batches:
        b["types"] = (torch.arange(b["src"].size(1)) >= 3).long().expand_as(b["src"])
        pruner.on_batch(d, b)
    training = [c for c in calls if c["grad"]]
    assert len(training) == 2 and all(c.get("label_smoothing") == 0.3 for c in training)
    scoring = [c for c in calls if not c["grad"]]  # the cycle: A and D on both cached batches
    assert len(scoring) == 4 and all(c.get("label_smoothing", 0.0) == 0.0 and c["reduction"] == "none" for c in scoring)
    assert len(types_seen) == 4 and all(t is not None and t.max() == 1 for t in types_seen)
    x_typed, _ = pruner._inputs(d, batches[0]["src"], batches[0]["types"])
    x_plain, _ = pruner._inputs(d, batches[0]["src"])
    assert not torch.allclose(x_typed, x_plain)  # G-Net sees the token types too
