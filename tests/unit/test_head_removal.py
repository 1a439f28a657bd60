"""Real head removal (Michel et al. 2019, section 6): removed heads == gated-off heads, in every attention
type, composed removals, fully removed layers, and save/load of the smaller model."""

from __future__ import annotations

import random

import pytest
import torch

from prunelab.models import Transformer
from prunelab.models.addressing import attention_names, component, set_gate
from prunelab.models.decoding import beam_search
from prunelab.models.surgery import load_state_dict_with_heads, prune_heads, remaining_heads


def gate_off(model: Transformer, heads: dict[str, list[int]]) -> None:
    for name, hs in heads.items():
        for h in hs:
            set_gate(model, f"{name}.h{h}", 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removed_equals_masked_for_random_subsets(tiny_model: Transformer, batch: dict, seed: int) -> None:
    rng = random.Random(seed)
    heads = {n: rng.sample(range(4), rng.randint(0, 3)) for n in attention_names(tiny_model)}
    heads["dec.1.ea"] = [0, 1, 2, 3]  # a fully removed layer
    masked = Transformer(tiny_model.cfg).eval()
    masked.load_state_dict(tiny_model.state_dict())
    gate_off(masked, heads)
    prune_heads(tiny_model, heads)
    torch.testing.assert_close(tiny_model(batch["src"], batch["tgt_in"]), masked(batch["src"], batch["tgt_in"]))
    assert beam_search(tiny_model, batch["src"], 1, 2, beam_size=2) == beam_search(masked, batch["src"], 1, 2, 2)
    n_removed = sum(len(v) for v in heads.values())
    hs = tiny_model.cfg.d_model // tiny_model.cfg.n_heads
    d = tiny_model.cfg.d_model
    # each removed head takes hs rows of Q, K, V (weights + biases) and hs columns of O
    assert sum(p.numel() for p in masked.parameters()) - sum(p.numel() for p in tiny_model.parameters()) == (
        n_removed * (3 * (hs * d + hs) + d * hs)
    )


def test_removal_composes_with_original_numbers(tiny_model: Transformer, batch: dict) -> None:
    masked = Transformer(tiny_model.cfg).eval()
    masked.load_state_dict(tiny_model.state_dict())
    gate_off(masked, {"enc.0.sa": [1, 3]})
    prune_heads(tiny_model, {"enc.0.sa": [1]})
    prune_heads(tiny_model, {"enc.0.sa": [3, 1]})  # 3 is still head 3 of the original; 1 is gone already
    assert remaining_heads(tiny_model)["enc.0.sa"] == [0, 2]
    torch.testing.assert_close(tiny_model(batch["src"], batch["tgt_in"]), masked(batch["src"], batch["tgt_in"]))


def test_pruned_model_saves_and_loads(tiny_model: Transformer, batch: dict, tmp_path) -> None:
    prune_heads(tiny_model, {"enc.1.sa": [0, 1, 2, 3], "dec.0.sa": [2], "dec.1.ea": [0, 3]})
    torch.save(tiny_model.state_dict(), tmp_path / "pruned.pt")
    fresh = Transformer(tiny_model.cfg).eval()
    load_state_dict_with_heads(fresh, torch.load(tmp_path / "pruned.pt", weights_only=True))
    assert remaining_heads(fresh) == remaining_heads(tiny_model)
    assert component(fresh, "dec.1.ea").q_proj.weight.shape == (2 * 8, 32)
    assert torch.equal(fresh(batch["src"], batch["tgt_in"]), tiny_model(batch["src"], batch["tgt_in"]))


def test_without_heads_cuts_a_copy_by_head_name(tiny_model: Transformer, batch: dict) -> None:
    """The speed study's pruned model (importance.speed.without_heads): heads named as the studies name them are
    cut out of a copy, which then computes what the original computes with those heads gated off."""
    from prunelab.criteria.ablation import heads_off
    from prunelab.studies.speed import without_heads

    tiny_model.eval()
    names = ["enc.0.sa.h1", "enc.0.sa.h3", "dec.1.ea.h0", "dec.0.sa.h2"]
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    pruned = without_heads(tiny_model, names)
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())  # the original is untouched
    assert remaining_heads(pruned)["enc.0.sa"] == [0, 2] and remaining_heads(pruned)["dec.1.ea"] == [1, 2, 3]
    with heads_off(tiny_model, names):
        torch.testing.assert_close(pruned(batch["src"], batch["tgt_in"]), tiny_model(batch["src"], batch["tgt_in"]))
