"""Head importance I_h = E_x |dL(x)/d xi_h| (Michel et al. 2019) pinned against a hand computation:

- in eval mode (dropout off) whatever mode the model is in, and the model's mode is given back;
- over exactly the first `max_batches` batches of the loader, averaged over their examples;
- heads gated off before stay off, and the importance is taken with them off.

The reference differentiates the loss of each example ALONE (a one-row batch) with respect to one gate vector
(H,) per attention sub-layer, on a deep copy of the model put in eval mode by hand.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch

from prunelab.criteria.heads import head_importance
from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import attention_names, component, set_gate

N_BATCHES = 4


def dropout_model() -> Transformer:
    torch.manual_seed(0)
    model = build_transformer(
        vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dec_layers=1, dropout=0.3, attn_dropout=0.2
    )
    return model.double().train()


def make_batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 30, (3, 6), generator=g)
    src[seed % 3, 4:] = 0
    tgt = torch.randint(4, 30, (3, 5), generator=g)
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), tgt[:, :-1]], 1)
    tgt_out = tgt.clone()
    tgt_out[(seed + 1) % 3, 3:] = 0
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


class CountingLoader:
    """An iterable of batches that records how many were drawn from it."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]):
        self.batches = batches
        self.drawn = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for b in self.batches:
            self.drawn += 1
            yield b


def by_hand(model: Transformer, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """mean over every example x of these batches of |dL(x)/d xi|, in eval mode, with the gates as they are."""
    m = copy.deepcopy(model).eval()
    names = attention_names(m)
    total = {n: torch.zeros(component(m, n).n_heads, dtype=torch.float64) for n in names}
    count = 0
    for batch in batches:
        for i in range(batch["src"].size(0)):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            gates = {n: component(m, n).head_gate.detach().clone().requires_grad_(True) for n in names}
            for n in names:
                component(m, n).head_gate = gates[n]
            (loss,) = m.example_losses(one)
            grads = torch.autograd.grad(loss, [gates[n] for n in names])
            for n, g in zip(names, grads, strict=True):
                total[n] += g.abs()
            count += 1
    return {n: t / count for n, t in total.items()}


def test_dropout_matters_in_this_fixture() -> None:
    """Guard: in train mode the model's losses are random, so a computation with dropout on would differ."""
    model, b = dropout_model(), make_batch(0)
    torch.manual_seed(1)
    first = model.example_losses(b)
    assert not torch.allclose(first, model.example_losses(b))


def test_importance_is_taken_in_eval_mode_and_the_mode_is_restored() -> None:
    model = dropout_model()
    batches = [make_batch(s) for s in range(N_BATCHES)]
    expected = by_hand(model, batches)
    got = head_importance(model, batches, normalize=False)
    assert model.training and all(m.training for m in model.modules())  # given back in train mode
    for n in expected:
        torch.testing.assert_close(got[n].double(), expected[n], rtol=1e-5, atol=1e-7)
    normalised = head_importance(model, batches)
    for n in expected:
        torch.testing.assert_close(normalised[n].double(), expected[n] / expected[n].norm(), rtol=1e-5, atol=1e-7)
    model.eval()
    head_importance(model, batches)
    assert not model.training  # an eval-mode model stays in eval mode


@pytest.mark.parametrize("max_batches", [1, 2, 3])
def test_importance_averages_exactly_the_first_max_batches(max_batches: int) -> None:
    model = dropout_model()
    batches = [make_batch(s) for s in range(N_BATCHES)]
    loader = CountingLoader(batches)
    got = head_importance(model, loader, normalize=False, max_batches=max_batches)
    expected = by_hand(model, batches[:max_batches])
    wrong = by_hand(model, batches[: max_batches + 1])
    for n in expected:
        torch.testing.assert_close(got[n].double(), expected[n], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(expected[n], wrong[n], rtol=1e-3) for n in expected)  # one batch more would show


def test_importance_draws_no_more_than_max_batches_from_the_loader() -> None:
    """No batch beyond the first max_batches is drawn (loading and collating it would be wasted, and a shared
    iterator would lose it)."""
    loader = CountingLoader([make_batch(s) for s in range(N_BATCHES)])
    head_importance(dropout_model(), loader, max_batches=2)
    assert loader.drawn == 2


def test_masked_heads_stay_masked_and_are_scored_masked() -> None:
    model = dropout_model()
    set_gate(model, "dec.0.ea.h1", 0.0)
    set_gate(model, "enc.0.sa.h0", 0.0)
    before = {n: component(model, n).head_gate.clone() for n in attention_names(model)}
    batches = [make_batch(s) for s in range(2)]
    expected = by_hand(model, batches)  # with those two heads off
    got = head_importance(model, batches, normalize=False)
    for n in expected:
        torch.testing.assert_close(got[n].double(), expected[n], rtol=1e-5, atol=1e-7)
        assert torch.equal(component(model, n).head_gate, before[n])  # 0 stays 0, 1 stays 1
        assert not component(model, n).head_gate.requires_grad
    assert float(component(model, "dec.0.ea").head_gate[1]) == 0.0
    # scoring with the heads back on gives other values: the test above can tell the two apart
    unmasked = copy.deepcopy(model)
    set_gate(unmasked, "dec.0.ea.h1", 1.0)
    set_gate(unmasked, "enc.0.sa.h0", 1.0)
    other = by_hand(unmasked, batches)
    assert not torch.allclose(other["dec.0.ea"], expected["dec.0.ea"], rtol=1e-3)
