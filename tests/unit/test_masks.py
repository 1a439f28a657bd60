import pytest
import torch
from torch import nn

from prunelab.models import Transformer
from prunelab.pruning import MagnitudePruner
from prunelab.pruning.masks import csc_bytes, magnitude_masks, prunable_weights


def test_prunable_weights_are_linear_matrices_only(tiny_model: Transformer) -> None:
    names = prunable_weights(tiny_model)
    assert names, "no prunable weights found"
    for name, w in names.items():
        assert name.endswith(".weight") and w.dim() == 2
        assert "norm" not in name and not name.startswith("embed")
    # 2 encoder layers x (4 attention + 2 ff) + 2 decoder layers x (8 attention + 2 ff)
    assert len(names) == 2 * 6 + 2 * 10
    with_emb = prunable_weights(tiny_model, include_embeddings=True)
    assert set(with_emb) - set(names) == {"embed.weight"}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.95])
def test_exact_per_matrix_sparsity(tiny_model: Transformer, sparsity: float) -> None:
    original = {n: w.detach().clone() for n, w in prunable_weights(tiny_model).items()}
    pruner = MagnitudePruner(sparsity=sparsity)
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, sparsity)
    for name, w in prunable_weights(tiny_model).items():
        mask = pruner.masks[name].bool()
        assert int((~mask).sum()) == round(sparsity * w.numel()), name  # exactly k masked per matrix
        assert bool((w[~mask] == 0).all()), name  # masked weights are zeroed in place
        assert torch.equal(w[mask], original[name][mask]), name  # kept weights are unchanged
        if 0 < sparsity:
            # the kept weights are the largest in magnitude
            assert original[name][mask].abs().min() >= original[name][~mask].abs().max(), name


def test_magnitude_ranking_keeps_largest() -> None:
    w = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]])
    masks = magnitude_masks({"w": w}, {"w": torch.ones_like(w)}, 0.5)
    assert masks["w"].tolist() == [[0, 1, 1], [1, 0, 0]]


def test_global_scope_ranks_across_matrices() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    ones = {"a": torch.ones_like(a), "b": torch.ones_like(b)}
    masks = magnitude_masks({"a": a, "b": b}, ones, 0.5, scope="global")
    assert masks["a"].sum() == 0 and masks["b"].sum() == 4


def test_masks_only_shrink(tiny_model: Transformer) -> None:
    pruner = MagnitudePruner(sparsity=0.9)
    pruner.attach(tiny_model)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    for s in (0.2, 0.5, 0.7, 0.9):
        # perturb weights so the ranking would change if masked weights could come back
        with torch.no_grad():
            for w in prunable_weights(tiny_model).values():
                w.add_(torch.randn_like(w))
        pruner.prune_to(tiny_model, s)
        for n, m in pruner.masks.items():
            assert bool((m <= previous[n]).all()), n
            previous[n] = m.clone()


def test_biases_and_norms_untouched(tiny_model: Transformer) -> None:
    with torch.no_grad():  # biases start at 0 and norms at 1: give them values that pruning could hit
        for p in tiny_model.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.01)
    before = {n: p.clone() for n, p in tiny_model.named_parameters() if p.dim() == 1}
    pruner = MagnitudePruner(sparsity=0.9)
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, 0.9)
    for n, p in tiny_model.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, before[n]), n
            assert bool((p != 0).any())


def test_gradients_of_masked_weights_are_zeroed(tiny_model: Transformer, batch: dict) -> None:
    pruner = MagnitudePruner(sparsity=0.5)
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, 0.5)
    tiny_model(batch["src"], batch["tgt_in"]).sum().backward()
    pruner.mask_gradients()
    for name, w in prunable_weights(tiny_model).items():
        assert bool((w.grad[pruner.masks[name] == 0] == 0).all()), name


def test_masks_survive_state_dict_round_trip(tiny_model: Transformer, tmp_path) -> None:
    pruner = MagnitudePruner(sparsity=0.7)
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, 0.7)
    holder = nn.ModuleDict({"model": tiny_model, "pruner": pruner})
    torch.save(holder.state_dict(), tmp_path / "ckpt.pt")

    fresh_model = Transformer(tiny_model.cfg)
    fresh = MagnitudePruner(sparsity=0.7)
    fresh.attach(fresh_model)
    nn.ModuleDict({"model": fresh_model, "pruner": fresh}).load_state_dict(
        torch.load(tmp_path / "ckpt.pt", weights_only=True)
    )
    for n, m in pruner.masks.items():
        assert torch.equal(fresh.masks[n], m)
    assert fresh.report(fresh_model)["sparsity"]["overall"] == pytest.approx(0.7, abs=1e-3)


def test_report_counts(tiny_model: Transformer) -> None:
    pruner = MagnitudePruner(sparsity=0.5)
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, 0.5)
    rep = pruner.report(tiny_model)
    weights = prunable_weights(tiny_model)
    prunable = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert rep["params"]["prunable"] == prunable
    assert rep["params"]["total"] == sum(p.numel() for p in tiny_model.parameters())
    assert rep["params"]["remaining"] == rep["params"]["total"] - zeros
    assert rep["sparsity"]["overall"] == pytest.approx(zeros / prunable)
    assert set(rep["sparsity"]["per_matrix"]) == set(weights)


def test_csc_bytes_by_hand() -> None:
    # 3x4 matrix with 5 non-zeros: 5 values + 5 row indices + 5 column pointers, 4 bytes each
    m = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 1]])
    assert csc_bytes(m) == 5 * 4 + 5 * 4 + (4 + 1) * 4
    assert csc_bytes(m, value_bytes=2, index_bytes=2) == 5 * 2 + 5 * 2 + 5 * 2


def test_bad_sparsity_rejected() -> None:
    from prunelab.errors import UserError

    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(UserError, match="sparsity must be in"):
            MagnitudePruner(sparsity=bad)
