"""Michel et al. (2019) ablations: which heads are masked at each evaluation, and gates restored after.

The scoring functions here read the gates, so every test knows exactly what was masked when."""

from __future__ import annotations

import pytest
import torch

from prunelab.criteria.ablation import (
    heads_off,
    iterative_pruning,
    keep_one_head,
    order_by_score,
    scores_by_head,
    single_head_ablation,
)
from prunelab.models import Transformer
from prunelab.models.addressing import attention_names, component, gate, head_names
from prunelab.models.surgery import prune_heads
from prunelab.scoring.scores import corpus_bleu


def closed(model: Transformer) -> set[str]:
    return {h for h in head_names(model) if float(gate(model, h)) == 0.0}


def all_open(model: Transformer) -> bool:
    return all(bool((component(model, c).head_gate == 1).all()) for c in attention_names(model))


def test_heads_off_masks_and_restores(tiny_model: Transformer) -> None:
    with heads_off(tiny_model, ["enc.0.sa.h1", "dec.1.ea.h3"]):
        assert closed(tiny_model) == {"enc.0.sa.h1", "dec.1.ea.h3"}
    assert all_open(tiny_model)


def test_single_head_ablation_masks_one_head_at_a_time(tiny_model: Transformer) -> None:
    weight = {h: i + 1.0 for i, h in enumerate(head_names(tiny_model))}
    base, deltas = single_head_ablation(tiny_model, lambda: 100.0 - sum(weight[h] for h in closed(tiny_model)))
    assert base == 100.0
    assert deltas == {h: -w for h, w in weight.items()}  # each evaluation saw exactly that head closed
    assert all_open(tiny_model)


def test_keep_one_head_chooses_on_valid_scores_on_test(tiny_model: Transformer) -> None:
    # valid prefers keeping head 2; test is scored with the choice made on valid
    def valid() -> float:
        return sum(1.0 for c in attention_names(tiny_model) if f"{c}.h2" not in closed(tiny_model))

    calls: list[set[str]] = []

    def test() -> float:
        calls.append(closed(tiny_model))
        return 50.0 - len(closed(tiny_model))

    out = keep_one_head(tiny_model, valid, test)
    assert set(out) == set(attention_names(tiny_model))
    for r in out.values():
        assert r["head"] == 2
        assert r["test"] == 47.0 and r["delta_test"] == -3.0  # 3 of the 4 heads closed
    assert calls[0] == set() and calls[1] == {"enc.0.sa.h0", "enc.0.sa.h1", "enc.0.sa.h3"}
    assert all_open(tiny_model)


def test_iterative_pruning_follows_the_order_in_10_percent_steps(tiny_model: Transformer) -> None:
    scores = {h: float(i % 7) + i / 1000 for i, h in enumerate(head_names(tiny_model))}
    order = order_by_score(scores)
    assert [scores[h] for h in order] == sorted(scores.values())
    seen: list[set[str]] = []
    points = iterative_pruning(tiny_model, order, lambda: (seen.append(closed(tiny_model)), 0.0)[1])
    n = len(order)  # 24 heads: steps of ceil(2.4 k)
    assert [p[0] for p in points] == pytest.approx([0.0] + [min(n, -(-24 * k // 10)) / n for k in range(1, 11)])
    for s in seen[1:]:
        assert s == set(order[: len(s)])  # always the least important ones first
    assert all_open(tiny_model)


def test_order_per_attention_type() -> None:
    scores = {"enc.0.sa.h0": 0.5, "dec.0.ea.h1": 0.1, "dec.0.sa.h0": 0.3, "dec.0.ea.h0": 0.2}
    assert order_by_score(scores, ["D:EA"]) == ["dec.0.ea.h1", "dec.0.ea.h0"]
    assert order_by_score(scores) == ["dec.0.ea.h1", "dec.0.ea.h0", "dec.0.sa.h0", "enc.0.sa.h0"]


def test_names_follow_original_numbers_after_removal(tiny_model: Transformer) -> None:
    prune_heads(tiny_model, {"dec.0.sa": [0, 2]})
    assert [h for h in head_names(tiny_model) if h.startswith("dec.0.sa")] == ["dec.0.sa.h1", "dec.0.sa.h3"]
    with heads_off(tiny_model, ["dec.0.sa.h3"]):
        assert component(tiny_model, "dec.0.sa").head_gate.tolist() == [1.0, 0.0]
    s = scores_by_head(tiny_model, {"dec.0.sa": torch.tensor([0.7, 0.9])})
    assert s == {"dec.0.sa.h1": pytest.approx(0.7), "dec.0.sa.h3": pytest.approx(0.9)}
    with pytest.raises(KeyError, match="no such head"):
        gate(tiny_model, "dec.0.sa.h0")


def test_corpus_bleu_scores_real_decodes(tiny_model: Transformer, batch: dict) -> None:
    import sacrebleu

    from prunelab.data.tokenizer import WordTokenizer
    from prunelab.models.decoding import greedy_decode

    tok = WordTokenizer([f"w{i}" for i in range(46)])
    # independently: greedy decoding (what beam 1 is), detokenized, scored by sacrebleu itself; one reference
    # is the model's own translation, so the score is neither 0 nor 100
    hyps = [tok.decode(h) for h in greedy_decode(tiny_model, batch["src"], tok.bos_id, tok.eos_id)]
    refs = [hyps[0], "w1 w2 w3", " ".join([*hyps[2].split()[:2], "w1", "w2"])]
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert 0.0 < expected < 100.0
    b = {**batch, "ref": refs}
    assert corpus_bleu(tiny_model, [b], tok) == pytest.approx(expected, abs=1e-9)


def test_iterative_pruning_scores_each_count_once(tiny_model: Transformer) -> None:
    order = head_names(tiny_model)[:8]  # 8 heads: 10% steps give 1, 2, 3, 4, 4, 5, ... heads
    counts: list[int] = []
    points = iterative_pruning(tiny_model, order, lambda: (counts.append(len(closed(tiny_model))), 0.0)[1])
    assert counts == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert [p[0] for p in points] == [c / 8 for c in counts]


def test_iterative_pruning_of_no_heads_returns_the_baseline(tiny_model: Transformer) -> None:
    assert iterative_pruning(tiny_model, [], lambda: 42.0) == [(0.0, 42.0)]
