"""The mask pruner's score seam: a method overrides `scores(model)`, and `prune_to` keeps the highest scores
as given (signed scores rank as they are), per matrix or globally, never bringing masked entries back."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.models import Transformer
from prunelab.pruning.base import MaskPruner
from prunelab.pruning.masks import keep_top, prunable_weights
from prunelab.pruning.random import RandomPruner


class SignedScores(MaskPruner):
    """Scores = the weights themselves (signed): the most negative weights go first."""

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        return {n: w.detach().clone() for n, w in self._weights.items()}


def test_signed_scores_rank_without_abs(tiny_model: Transformer) -> None:
    original = {n: w.detach().clone() for n, w in prunable_weights(tiny_model).items()}
    pruner = SignedScores(sparsity=0.5)
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, 0.5)
    for name, w0 in original.items():
        keep = pruner.masks[name].bool()
        k = round(0.5 * w0.numel())
        # brute force: the k smallest signed values are exactly the masked ones
        expected = torch.ones(w0.numel(), dtype=torch.bool)
        expected[torch.argsort(w0.flatten())[:k]] = False
        assert torch.equal(keep.flatten(), expected), name
        # a wrong implementation ranking |w| would keep large negative weights
        assert float(w0[keep].min()) >= float(w0[~keep].max())


def test_masked_entries_never_come_back_even_with_top_scores() -> None:
    scores = {"w": torch.tensor([[9.0, 1.0], [2.0, 3.0]])}
    masks = {"w": torch.tensor([[0.0, 1.0], [1.0, 1.0]])}  # the top-scoring entry is already masked
    new = keep_top(scores, masks, 0.5)["w"]
    assert new.tolist() == [[0.0, 0.0], [1.0, 1.0]]  # the lowest surviving score (1.0) goes next
    # a lower target than what is masked keeps what is masked
    assert keep_top(scores, masks, 0.0)["w"].tolist() == masks["w"].tolist()


def test_global_scope_with_signed_scores() -> None:
    scores = {"a": torch.tensor([[-3.0, 1.0]]), "b": torch.tensor([[-1.0, 2.0]])}
    masks = {n: torch.ones_like(s) for n, s in scores.items()}
    new = keep_top(scores, masks, 0.5, scope="global")
    assert new["a"].tolist() == [[0.0, 1.0]] and new["b"].tolist() == [[0.0, 1.0]]


def test_random_pruner_reaches_exact_sparsity_and_is_not_magnitude(tiny_model: Transformer) -> None:
    pruner = RandomPruner(sparsity=0.8, seed=3)
    pruner.attach(tiny_model)
    original = {n: w.detach().clone() for n, w in prunable_weights(tiny_model).items()}
    pruner.prune_to(tiny_model, 0.8)
    agree_with_magnitude = []
    for name, w0 in original.items():
        keep = pruner.masks[name].bool()
        assert int((~keep).sum()) == round(0.8 * w0.numel()), name
        agree_with_magnitude.append(float(w0[keep].abs().min()) >= float(w0[~keep].abs().max()))
    assert not all(agree_with_magnitude)  # random choice, not the largest magnitudes


def test_random_pruner_draw_depends_on_seed_and_state_only(tiny_model: Transformer) -> None:
    def masks_after(seed: int) -> dict[str, Tensor]:
        model = Transformer(tiny_model.cfg)
        model.load_state_dict(tiny_model.state_dict())
        p = RandomPruner(sparsity=0.9, seed=seed)
        p.attach(model)
        p.prune_to(model, 0.5)
        p.prune_to(model, 0.9)
        return {n: m.clone() for n, m in p.masks.items()}

    a, b, c = masks_after(1), masks_after(1), masks_after(2)
    assert all(torch.equal(a[n], b[n]) for n in a)  # the same seed: the same masks (DDP ranks, resumes)
    assert any(not torch.equal(a[n], c[n]) for n in a)
