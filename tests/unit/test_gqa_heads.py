"""Heads under grouped-query attention: query heads and K/V groups are both addressable, a group's importance is the
gradient of one gate over its query heads (checked against a brute-force per-example derivative), and the heads
pruner with unit=group removes whole groups with their heads."""

from __future__ import annotations

import pytest
import torch

from prunelab.criteria.ablation import gates_off
from prunelab.criteria.heads import head_importance
from prunelab.models.addressing import gate, group_names, head_names
from prunelab.models.causal_lm import CausalLM
from prunelab.pruning.heads import HeadPruner
from tests.tiny import tiny_llama

V = 53


def tiny_lm(seed: int = 0) -> CausalLM:
    return tiny_llama(seed, vocab_size=V, d_model=36, n_heads=6, n_kv_heads=2, d_ff=40, dec_layers=2)


def batches(n: int = 2, B: int = 3, T: int = 10) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        w = torch.randint(0, V, (B, T + 1), generator=g)
        out.append({"src": w[:, :-1], "target": w[:, 1:]})
    return out


def test_groups_and_heads_are_addressable() -> None:
    model = tiny_lm()
    assert group_names(model) == [f"dec.{i}.sa.g{k}" for i in range(2) for k in range(2)]
    assert len(head_names(model)) == 12
    g = gate(model, "dec.1.sa.g1")  # query heads 3, 4, 5
    assert g.numel() == 3
    x = batches(1)[0]["src"]
    with torch.no_grad():
        with gates_off(model, ["dec.1.sa.g1"]):
            by_group = model(x)
        with gates_off(model, ["dec.1.sa.h3", "dec.1.sa.h4", "dec.1.sa.h5"]):
            by_heads = model(x)
    torch.testing.assert_close(by_group, by_heads)
    with pytest.raises(KeyError):
        gate(model, "dec.0.sa.g7")


def test_group_importance_is_the_per_example_gradient_of_a_group_gate() -> None:
    """Brute force: for each example alone, d L / d s where s scales the group's query heads, |.| averaged."""
    model = tiny_lm()
    data = batches()
    got = head_importance(model, data, normalize=False, groups=True)
    attn = model.get_submodule("dec.0.sa")
    want = torch.zeros(2, dtype=torch.float64)
    count = 0
    for b in data:
        for i in range(b["src"].size(0)):
            one = {k: v[i : i + 1] for k, v in b.items()}
            for k in range(2):
                s = torch.ones((), requires_grad=True)
                saved = attn.head_gate
                scale = torch.ones(6)
                scale[3 * k : 3 * k + 3] = 0.0
                attn.head_gate = scale + (1 - scale) * s  # heads of group k scaled by s
                (d,) = torch.autograd.grad(model.example_losses(one).sum(), [s])
                attn.head_gate = saved
                want[k] += abs(float(d))
            count += 1
    torch.testing.assert_close(got["dec.0.sa"].double(), want / count, rtol=1e-4, atol=1e-7)
    heads = head_importance(model, data, normalize=False)["dec.0.sa"]
    assert heads.shape == (6,)  # per head, not the same thing: |sum| <= sum of |.|
    assert torch.all(got["dec.0.sa"] <= heads.view(2, 3).sum(1) + 1e-6)


class _Loader:
    def __init__(self, data: list[dict[str, torch.Tensor]]):
        self.data = data

    def train_dataloader(self) -> list[dict[str, torch.Tensor]]:
        return self.data

    val_dataloader = train_dataloader


def test_unit_group_removes_whole_groups_with_their_heads() -> None:
    model = tiny_lm()
    pruner = HeadPruner(sparsity=0.5, unit="group", importance_batches=2)
    pruner.attach(model)
    pruner.use_data(_Loader(batches()))
    scores = pruner.scores(model)
    assert sorted(scores) == sorted(group_names(model))
    chosen = pruner.choose(model)
    assert len(chosen) == 2 and all(".g" in n for n in chosen)  # half of the 4 groups
    want = sorted(scores, key=lambda n: (scores[n], n))[:2]
    assert sorted(chosen) == sorted(want)
    pruner.remove(model, chosen)
    report = pruner.report(model)
    assert report["heads"]["unit"] == "group" and report["heads"]["groups_removed"] == 2
    assert len(report["heads"]["removed"]) == 6  # 3 query heads per group
    for name in chosen:
        comp, g = name.rsplit(".g", 1)
        attn = model.get_submodule(comp)
        assert int(g) not in attn.kv_ids.tolist() and int(g) not in attn.head_groups.tolist()
    # the parameters said removed are the ones gone: rows of Q, K, V and columns of O, no biases here
    before = sum(p.numel() for p in tiny_lm().parameters())
    assert report["params"]["before_pruning"] == before
    x = batches(1)[0]["src"]
    assert model(x).shape == (3, 10, V)


def test_unit_head_keeps_a_group_until_its_last_head() -> None:
    model = tiny_lm()
    pruner = HeadPruner(sparsity=0.25, unit="head", importance_batches=2)
    pruner.attach(model)
    pruner.use_data(_Loader(batches()))
    pruner.remove(model, ["dec.0.sa.h0", "dec.0.sa.h1"])
    assert model.get_submodule("dec.0.sa").kv_ids.tolist() == [0, 1]
    pruner.remove(model, ["dec.0.sa.h2"])
    assert model.get_submodule("dec.0.sa").kv_ids.tolist() == [1]
    report = pruner.report(model)
    assert report["heads"]["groups_removed"] == 1
    assert report["params"]["before_pruning"] == sum(p.numel() for p in tiny_lm().parameters())


def test_unknown_unit_is_refused() -> None:
    from prunelab.errors import UserError

    with pytest.raises(UserError, match=r"pruner\.unit"):
        HeadPruner(sparsity=0.5, unit="layer")


def test_one_shot_magnitude_needs_no_calibration_data() -> None:
    """Magnitude ranks |W| alone: each Linear keeps its largest half, and the data module is never asked for a
    calibration set (it has no splits at all here)."""
    from prunelab.pruning.oneshot import OneShotPruner

    model = tiny_lm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = OneShotPruner(sparsity=0.5, method="magnitude")
    pruner.attach(model)
    pruner.use_data(object())  # any use of it would fail
    pruner.prune(model)
    assert pruner.details["calibration"]["examples"] == 0
    for n, w in model.named_parameters():
        if n.endswith("proj.weight") or ".ff.fc" in n:
            kept = w != 0
            assert float(kept.float().mean()) == 0.5
            threshold = before[n].abs().flatten().kthvalue(w.numel() // 2).values
            assert bool((before[n].abs()[kept] >= threshold).all())
