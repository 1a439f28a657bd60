"""prunelab's one-shot SparseGPT and Wanda against the reference implementations' algorithms
(bench/reference_oneshot.py: IST-DASLab/sparsegpt's llama_sequential + fasterprune, locuslab/wanda's prune_wanda,
run on transformers' LlamaForCausalLM): on the same tiny random Llama and the same calibration windows, every mask
equal and every weight equal to the last bit. A solver with another dampening, block size or mask-count rule,
or a driver that calibrated a layer on other inputs, gives other masks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from oneshot import llama_pair, llama_windows, prunelab_oneshot  # noqa: E402
from reference_oneshot import SparseGPT, llama_sequential, wanda_prune  # noqa: E402

from prunelab.pruning import solvers  # noqa: E402
from prunelab.pruning.solvers import InputStats, Pattern, removal_mask, sparsegpt, wanda_scores  # noqa: E402

# 2 layers of width 96 (its 96 columns and the MLP's 256 not a multiple of 128: a short last block), 4 query and
# 2 K/V heads
TINY = dict(
    vocab_size=300,
    hidden_size=96,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)


def prune_both(method: str) -> tuple[Any, Any, dict[str, str], dict, dict]:
    hf, ours, names = llama_pair(TINY)
    windows = llama_windows(4, 48, TINY["vocab_size"], ours.cfg.pad_id)
    theirs = llama_sequential(hf, windows, method, 0.5)
    mine = prunelab_oneshot(ours, windows, method)
    return hf, ours, names, mine, theirs


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_masks_and_weights_equal_the_reference(method: str) -> None:
    hf, ours, names, mine, theirs = prune_both(method)
    assert len(names) == len(theirs) == 14  # q, k, v, o, gate, up, down of 2 layers
    for n, t in names.items():
        assert torch.equal(mine[n], theirs[t]), f"{n} ({t}): {int((mine[n] != theirs[t]).sum())} entries differ"
        w, ref = ours.get_parameter(n), hf.get_parameter(f"{t}.weight")
        # the statistics summed in the references' order, the forwards alike: the same weights to the last bit
        assert torch.equal(w, ref), f"{n}: max |difference| {float((w - ref).abs().max()):.2g}"
    # SparseGPT's per-block rule removes int(numel · sparsity) + 1 entries of each 128-column block (<= the
    # int(·)-th smallest, 0-based); Wanda exactly half of each row
    extra = {"sparsegpt": 1, "wanda": 0}[method]
    for n, t in names.items():
        rows, cols = theirs[t].shape
        if method == "sparsegpt":
            blocks = [min(128, cols - i) for i in range(0, cols, 128)]
            assert int(mine[n].sum()) == sum(rows * b // 2 + extra for b in blocks)
        else:
            assert (mine[n].sum(1) == cols // 2).all()


@pytest.mark.parametrize("change", [{"damp": 0.1}, {"block": 64}, {"block": 256}])
def test_another_dampening_or_block_size_gives_other_masks(change: dict[str, Any]) -> None:
    """The comparison above can tell: the reference's own solve of one matrix from its own H, against prunelab's
    solver with the reference's settings (equal) and with another one (different)."""
    g = torch.Generator().manual_seed(3)
    layer = torch.nn.Linear(256, 64, bias=False)
    layer.weight.data = torch.randn(64, 256, generator=g)
    x = torch.randn(2, 300, 256, generator=g) * torch.rand(256, generator=g)  # columns of unequal scale
    ref = SparseGPT(layer)
    stats = InputStats(256, full=True)
    for chunk in x:
        ref.add_batch(chunk.unsqueeze(0))
        stats.add(chunk)
    w0 = layer.weight.data.clone()
    mask = ref.fasterprune(0.5)
    same_w, same = sparsegpt(w0, stats.h.clone(), 0.5)
    assert torch.equal(same, mask)
    torch.testing.assert_close(same_w, layer.weight.data, rtol=1e-4, atol=1e-5)
    _, other = sparsegpt(w0, stats.h.clone(), 0.5, **change)
    assert not torch.equal(other, mask)


def test_damped_h_and_its_inverse_factor_are_the_references_bit_for_bit() -> None:
    """λ = 1% of mean(diag H) taken as the reference takes it (the mean of torch.diag's contiguous copy): a mean over
    the strided diagonal sums in another order, λ lands one rounding apart, and over a 57M-parameter model a few
    near-tied scores cross the threshold (6 of 36M mask entries did). Seeds where the two means differ."""
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(512, 256, generator=g) * torch.rand(256, generator=g) * 3
        h = x.T @ x
        ref = h.clone()
        ref[torch.arange(256), torch.arange(256)] += 0.01 * torch.mean(torch.diag(ref))  # fasterprune's lines
        ref_u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(ref)), upper=True)
        assert torch.equal(solvers.damped(h, 0.01, torch.float32), ref)
        damped = solvers.damped(h.clone(), 0.01, torch.float32, inplace=True)
        assert torch.equal(solvers.inverse_cholesky(damped, inplace=True), ref_u)


def test_sparsegpt_zeroes_the_weights_of_dead_inputs_as_the_reference() -> None:
    """Inputs that were 0 on every calibration token: the reference zeroes their weights (so they are removed, and
    count in their block's share); prunelab the same."""
    g = torch.Generator().manual_seed(4)
    layer = torch.nn.Linear(64, 32, bias=False)
    layer.weight.data = torch.randn(32, 64, generator=g) * 0.01  # small weights: kept if their inputs were counted
    x = torch.randn(200, 64, generator=g)
    x[:, :6] = 0
    ref = SparseGPT(layer)
    ref.add_batch(x.unsqueeze(0))
    stats = InputStats(64, full=True)
    stats.add(x)
    w0 = layer.weight.data.clone()
    mask = ref.fasterprune(0.3)
    new, removed = sparsegpt(w0, stats.h.clone(), 0.3)
    assert mask[:, :6].all() and torch.equal(removed, mask)
    torch.testing.assert_close(new, layer.weight.data, rtol=1e-4, atol=1e-6)


def test_wanda_count_and_ties_are_the_reference_stable_sort() -> None:
    """int(cols · sparsity) per row (0.3 of 12 columns: 3, where round would give 4), and among equal scores (inputs
    never seen: every score of their column 0) the earlier columns first."""
    g = torch.Generator().manual_seed(5)
    layer = torch.nn.Linear(12, 8, bias=False)
    layer.weight.data = torch.randn(8, 12, generator=g)
    norms = torch.rand(12, generator=g) + 0.1
    norms[[2, 5, 7, 9]] = 0.0  # four zero columns: three of them removed in each row, the first three
    ref_layer = torch.nn.Linear(12, 8, bias=False)
    ref_layer.weight.data = layer.weight.data.clone()
    mask = wanda_prune(ref_layer, norms, 0.3)
    removed = removal_mask(wanda_scores(layer.weight.data, norms), 0.3, Pattern(), per_row=True)
    assert torch.equal(removed, mask)
    assert removed[:, [2, 5, 7]].all() and not removed[:, 9].any()
