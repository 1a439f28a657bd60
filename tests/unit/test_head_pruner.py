"""`pruner=heads`: which heads it removes, how it counts them, and what it reports."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import UserError
from prunelab.models import Transformer
from prunelab.models.addressing import head_names
from prunelab.models.surgery import remaining_heads
from prunelab.pruning.heads import HeadPruner


def fixed_scores(model: Transformer) -> dict[str, float]:
    """A known importance per head: distinct, and not in name order."""
    names = head_names(model)
    return {h: float((i * 7) % len(names)) + 0.5 for i, h in enumerate(names)}


def pruner_with(model: Transformer, scores: dict[str, float], **kwargs: object) -> HeadPruner:
    pruner = HeadPruner(**kwargs)  # type: ignore[arg-type]
    pruner.attach(model)
    pruner.scores = lambda m: {h: v for h, v in scores.items() if h in head_names(m)}  # type: ignore[method-assign]
    return pruner


def test_removes_the_lowest_scoring_fraction_globally(tiny_model: Transformer) -> None:
    scores = fixed_scores(tiny_model)  # 6 attention sub-layers x 4 heads = 24 heads
    pruner = pruner_with(tiny_model, scores, sparsity=0.25)
    chosen = pruner.choose(tiny_model)
    assert sorted(chosen) == sorted(sorted(scores, key=scores.__getitem__)[:6])
    pruner.remove(tiny_model, chosen)
    assert set(head_names(tiny_model)) == set(scores) - set(chosen)
    rep = pruner.report(tiny_model)
    assert rep["sparsity"]["overall"] == pytest.approx(0.25)
    assert sorted(rep["heads"]["removed"]) == sorted(chosen)
    assert rep["heads"]["importance"] == pytest.approx(scores)


def test_types_restrict_which_heads_go(tiny_model: Transformer) -> None:
    scores = fixed_scores(tiny_model)
    pruner = pruner_with(tiny_model, scores, sparsity=0.5, types=["D:EA"])
    chosen = pruner.choose(tiny_model)
    assert len(chosen) == 4  # half of the 2 x 4 encoder-decoder heads
    assert all(".ea." in h for h in chosen)
    ea = sorted((v, h) for h, v in scores.items() if ".ea." in h)
    assert sorted(chosen) == sorted(h for _, h in ea[:4])


def test_parameter_count_matches_the_model(tiny_model: Transformer) -> None:
    before = sum(p.numel() for p in tiny_model.parameters())
    pruner = pruner_with(tiny_model, fixed_scores(tiny_model), sparsity=0.5)
    pruner.remove(tiny_model, pruner.choose(tiny_model))
    rep = pruner.report(tiny_model)
    after = sum(p.numel() for p in tiny_model.parameters())
    assert rep["params"]["total"] == after
    assert rep["params"]["before_pruning"] == before  # the per-head arithmetic agrees with the real model
    assert rep["params"]["removed"] == before - after > 0


def test_heads_removed_earlier_count_towards_the_fraction(tiny_model: Transformer) -> None:
    scores = fixed_scores(tiny_model)
    pruner = pruner_with(tiny_model, scores, sparsity=0.25)
    pruner.remove(tiny_model, pruner.choose(tiny_model))
    left = remaining_heads(tiny_model)
    again = pruner_with(tiny_model, scores, sparsity=0.25)
    again.removed.copy_(pruner.removed)
    assert again.choose(tiny_model) == []  # 25% are already gone
    assert remaining_heads(tiny_model) == left


def test_rounds_and_steps() -> None:
    p = HeadPruner(sparsity=0.5, finetune_steps=30)
    assert p.rounds == 3
    assert [p.round_steps(r, 1000, pretrained=False) for r in range(3)] == [1000, 0, 30]
    assert [p.round_steps(r, 1000, pretrained=True) for r in range(3)] == [0, 0, 30]
    assert [p.stage(r) for r in range(3)] == ["dense", "pruned", "fine-tuned"]
    assert HeadPruner(sparsity=0.5).rounds == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"types": ["E:FF"]}, "pruner.types"),
        ({"importance_split": "test"}, "importance_split"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"sparsity": 1.0}, "sparsity"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        HeadPruner(**{"sparsity": 0.5, **kwargs})


def test_real_importance_on_a_model(tiny_model: Transformer, batch: dict) -> None:
    """With data bound, the pruner scores heads by I_h itself and removes the lowest."""
    tgt = torch.cat([batch["tgt_in"][:, 1:], torch.full((3, 1), 2)], 1)

    class Data:
        def train_dataloader(self) -> list[dict]:
            return [{"src": batch["src"], "tgt_in": batch["tgt_in"], "tgt_out": tgt}]

    pruner = HeadPruner(sparsity=0.5, importance_batches=1)
    pruner.attach(tiny_model)
    pruner.use_data(Data())
    scores = pruner.scores(tiny_model)
    chosen = pruner.choose(tiny_model)
    assert max(scores[h] for h in chosen) <= min(v for h, v in scores.items() if h not in chosen)
