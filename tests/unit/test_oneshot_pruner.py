"""`pruner=oneshot` (OneShotPruner) end to end on a tiny translation model and the synthetic data's calibration set,
against independent computations: Wanda's masks are each output row's lowest |W|·‖X_j‖₂ (the inputs recorded here
with hooks, in the state each layer is calibrated in), and with `prune_embeddings` the layers are calibrated on what
the magnitude-pruned embedding gives them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.models import build_transformer
from prunelab.models.transformer import Transformer
from prunelab.pruning.base import mask_buffer
from prunelab.pruning.calibration import calibration_set
from prunelab.pruning.oneshot import OneShotPruner
from prunelab.pruning.solvers import InputStats

CALIBRATION = {"n": 12, "seed": 2}


@pytest.fixture(scope="module")
def nmt() -> SyntheticTranslationDataModule:
    dm = SyntheticTranslationDataModule(train_size=60, valid_size=10, test_size=10, max_tokens=512)
    dm.setup()
    return dm


def tiny(dm: SyntheticTranslationDataModule) -> Transformer:
    torch.manual_seed(0)
    model = build_transformer(
        vocab_size=dm.tokenizer.vocab_size,
        d_model=16,
        n_heads=2,
        d_ff=32,
        enc_layers=2,
        dec_layers=2,
        dropout=0.0,
        max_len=256,
    )
    return model.eval()


def calibration_batches(dm: SyntheticTranslationDataModule, pruner: OneShotPruner) -> list[dict]:
    """The pruner's calibration set, drawn again (the same settings and seed draw the same examples)."""
    return calibration_set(dm, **pruner.calibration).batches


def recorded_inputs(model: Transformer, batches: list[dict], names: list[str]) -> dict[str, torch.Tensor]:
    """The inputs each Linear in `names` receives on its real tokens (source tokens for the encoder and for
    cross-attention keys and values, the positions whose target the loss counts for the rest of the decoder)."""
    pad = model.cfg.pad_id
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    current: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        on_source = n.startswith("enc.") or n.endswith(("ea.k_proj", "ea.v_proj"))
        handles.append(
            model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n, s=on_source: rows[n].append(i[0][current["src" if s else "tgt"]])
            )
        )
    with torch.no_grad():
        for b in batches:
            current["src"], current["tgt"] = b["src"] != pad, b["tgt_out"] != pad
            model(b["src"], b["tgt_in"])
    for h in handles:
        h.remove()
    return {n: torch.cat(r).double() for n, r in rows.items()}


def test_wanda_removes_the_lowest_scores_of_each_output_row(nmt: SyntheticTranslationDataModule) -> None:
    """Sun et al.'s comparison group is the output row: every row of every Linear loses exactly int(s·in_features)
    weights (the reference's count, locuslab/wanda's prune_wanda), its lowest |W_ij|·‖X_j‖₂, with X the inputs the
    Linear sees once the layers before it are pruned. A ranking over the whole matrix removes other weights and leaves
    rows with different counts."""
    sparsity = 0.3  # int(0.3·16) = 4 of the d_model inputs, int(0.3·32) = 9 of fc2's (round would give 5 and 10)
    original = tiny(nmt)
    model = copy.deepcopy(original)
    pruner = OneShotPruner(sparsity=sparsity, method="wanda", calibration=CALIBRATION, device="cpu")
    pruner.attach(model)
    pruner.use_data(nmt)
    pruner.prune(model)
    batches = calibration_batches(nmt, pruner)
    masks = {n.removesuffix(".weight"): m.bool() for n, m in pruner.masks.items()}
    assert len(masks) == 2 * 6 + 2 * 10  # encoder layers: sa q k v out, ff fc1 fc2; decoder layers also ea
    layers = [f"enc.{i}" for i in range(2)] + [f"dec.{i}" for i in range(2)]
    for k, layer in enumerate(layers):
        # the model in which this layer is calibrated: the layers before it pruned, it and those after it not
        hybrid = copy.deepcopy(original)
        for before in layers[:k]:
            for n, m in masks.items():
                if n.startswith(f"{before}."):
                    hybrid.get_submodule(n).weight.data.mul_(m)
        names = [n for n in masks if n.startswith(f"{layer}.")]
        inputs = recorded_inputs(hybrid, batches, names)
        for n in names:
            w = original.get_submodule(n).weight.detach().double()
            removed = ~masks[n]
            k_row = int(sparsity * w.shape[1])
            assert (removed.sum(1) == k_row).all(), n  # every row loses the same number
            score = w.abs() * inputs[n].norm(dim=0)[None, :]  # |W_ij| · ‖X_j‖₂
            want = torch.zeros_like(removed).scatter_(1, score.argsort(dim=1)[:, :k_row], True)
            assert torch.equal(removed, want), n
            assert bool((model.get_submodule(n).weight[removed] == 0).all())


def test_embeddings_are_pruned_before_the_layers_are_calibrated(nmt: SyntheticTranslationDataModule) -> None:
    """`prune_embeddings=true`: the embedding's magnitude mask (its lowest |w| over the whole matrix) is applied
    before the sequential pass, so the first layers' H is Σ x xᵀ of what the pruned embedding gives them."""
    sparsity = 0.5
    original = tiny(nmt)
    model = copy.deepcopy(original)
    pruner = OneShotPruner(
        sparsity=sparsity, method="sparsegpt", prune_embeddings=True, calibration=CALIBRATION, device="cpu"
    )
    pruner.attach(model)
    pruner.use_data(nmt)
    watch = ["enc.0.sa.q_proj", "enc.0.sa.v_proj", "dec.0.sa.q_proj"]  # reading the embedding (after a norm)
    seen: dict[str, torch.Tensor] = {}
    solve = pruner.solve

    def recording(name: str, linear: nn.Linear, stats: InputStats) -> None:
        if name in watch:
            seen[name] = stats.h.clone()  # before SparseGPT overwrites it with its workspace
        solve(name, linear, stats)

    pruner.solve = recording  # type: ignore[method-assign]
    pruner.prune(model)

    # independently: the embedding's lowest half by magnitude, zeroed
    emb = original.embed.weight.detach()
    k = round(sparsity * emb.numel())
    removed = torch.zeros(emb.numel(), dtype=torch.bool)
    removed[emb.abs().flatten().argsort()[:k]] = True
    removed = removed.view_as(emb)
    assert torch.equal(~getattr(pruner, mask_buffer("embed.weight")).bool(), removed)
    masked = copy.deepcopy(original)
    masked.embed.weight.data[removed] = 0.0
    batches = calibration_batches(nmt, pruner)
    got = recorded_inputs(masked, batches, watch)
    unmasked = recorded_inputs(original, batches, watch)
    sequences = sum(b["src"].shape[0] for b in batches)  # H = 2/n Σ x xᵀ over n sequences, the reference's scale
    for n in watch:
        x, x0 = got[n], unmasked[n]
        torch.testing.assert_close(seen[n].double(), 2 / sequences * x.T @ x, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(x0.T @ x0, x.T @ x, rtol=1e-2, atol=1e-2)  # the mask changes what they see
