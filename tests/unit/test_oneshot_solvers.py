"""The layer-wise one-shot problems against their definitions, computed independently: Wanda's score from recorded
inputs, its per-row comparison groups, N:M groups along the input dimension, and SparseGPT against the optimal
brain surgeon solved by brute force (a least-squares solve per removed weight, no Cholesky factor)."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import UserError
from prunelab.pruning.solvers import (
    InputStats,
    Pattern,
    parse_pattern,
    removal_mask,
    row_lowest,
    sparsegpt,
    wanda_scores,
)


def layer(rows: int = 6, cols: int = 12, tokens: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and calibration inputs with correlated features and a few large ("outlier") input columns, the
    regime in which the methods differ."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    mix = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5 + torch.eye(cols, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ mix
    x[:, :2] *= 8.0  # outlier features
    return w, x


def stats_of(x: torch.Tensor, full: bool = True) -> InputStats:
    s = InputStats(x.shape[1], full)
    for chunk in x.split(37):  # accumulated over batches, as calibration does
        s.add(chunk)
    return s


def error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - w_hat) @ x.T).norm())


def test_wanda_scores_are_weight_times_input_column_norm() -> None:
    """|W_ij| · ‖X_j‖₂, up to the factor every score shares: the statistics are kept at the references' scale, 1/n
    Σ x² (wanda's scaler_row) and H = 2/n Σ x xᵀ (sparsegpt's), n the sequences (here 1 a batch of 37 rows)."""
    w, x = layer()
    s = stats_of(x, full=False)
    n = len(x.split(37))
    assert s.tokens == x.shape[0] and s.sequences == n
    want = torch.stack([torch.stack([w[i, j].abs() * x[:, j].norm() for j in range(w.shape[1])]) for i in range(6)])
    torch.testing.assert_close(wanda_scores(w, s.col_sq_norms).double() * n**0.5, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats_of(x).h.double(), 2 / n * x.T @ x, rtol=1e-5, atol=1e-3)


def test_wanda_compares_within_each_output_row() -> None:
    w, x = layer()
    w[0] *= 100.0  # a row of large weights: per matrix it would keep all of them, per row it loses its share
    scores = wanda_scores(w, stats_of(x, full=False).col_sq_norms)
    removed = removal_mask(scores, 0.5, Pattern(), per_row=True)
    assert removed.sum(1).tolist() == [6] * 6
    for i in range(6):  # in each row, every removed score is below every kept one
        assert scores[i][removed[i]].max() <= scores[i][~removed[i]].min()
    assert removal_mask(scores, 0.5, Pattern(), per_row=False)[0].sum() == 0  # per matrix: row 0 untouched


def stable_sort_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The definition (locuslab/wanda's prune_wanda): the first k indices of each row's stable ascending sort."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    for i, row in enumerate(scores.tolist()):
        order = sorted(range(len(row)), key=lambda j: (row[j] != row[j], row[j]))  # stable; NaN (!= itself) last
        out[i, order[:k]] = True
    return out


@pytest.mark.parametrize("k", [0, 1, 7, 12, 23, 24])
def test_row_lowest_is_the_stable_sorts_first_k(k: int) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(9, 24, generator=g)
    scores[1] = 0.0  # a row of equals: the first k columns go
    scores[2, ::3] = scores[2, 5]  # equals straddling the k-th value
    scores[3, 10:] = 0.0  # already-pruned zeros, more of them than k in some cases
    scores[4] = torch.arange(24.0).flip(0)  # strictly decreasing: the last k go
    scores[5, ::2] = 0.25
    scores[6, 3] = float("nan")  # NaN sorts last, as in torch.sort
    got = row_lowest(scores, k)
    assert torch.equal(got, stable_sort_lowest(scores, k))
    assert got.sum(1).tolist() == [k] * 9


@pytest.mark.parametrize("text", ["2:4", "4:8", "1:4"])
def test_nm_groups_run_along_the_input_dimension(text: str) -> None:
    pattern = parse_pattern(text)
    w, x = layer(rows=8, cols=16)
    scores = wanda_scores(w, stats_of(x, full=False).col_sq_norms)
    removed = removal_mask(scores, pattern.sparsity, pattern, per_row=True)
    groups = removed.view(8, 16 // pattern.m, pattern.m)
    assert (groups.sum(-1) == pattern.m - pattern.n).all()  # each group of M consecutive inputs keeps N
    sg = scores.view(8, -1, pattern.m)
    for r in range(8):
        for k in range(16 // pattern.m):
            kept, gone = sg[r, k][~groups[r, k]], sg[r, k][groups[r, k]]
            assert gone.max() <= kept.min()  # the group's lowest go
    assert removed.float().mean() == pytest.approx(pattern.sparsity)
    # groups along the outputs (the transposed layout) are not N:M along the inputs on this matrix
    along_rows = removal_mask(scores.T.contiguous(), pattern.sparsity, pattern, per_row=True).T
    assert not (along_rows.reshape(8, -1, pattern.m).sum(-1) == pattern.m - pattern.n).all()


def test_patterns_parse_or_say_what_is_wrong() -> None:
    assert parse_pattern(None) == Pattern() and str(parse_pattern("2:4")) == "2:4"
    assert parse_pattern("4:8").sparsity == 0.5 and parse_pattern("1:4").sparsity == 0.75
    for bad in ("4:2", "2-4", "0:4", "a:b", "2:4:8"):
        with pytest.raises(UserError, match=r"pruner\.pattern"):
            parse_pattern(bad)


def dampened(h: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """H + λI, λ = damp × the mean of H's diagonal (SparseGPT's dampening), written out here."""
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


def brute_force_sequential_obs(w: torch.Tensor, h: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Optimal brain surgeon, one removed weight at a time, columns left to right: removing weight (r, j) sets it to
    0 and moves the row's weights right of j to the minimum of (Δw) H (Δw)ᵀ with the weights left of j held, i.e.
    Δw_{>j} = H_{>j,>j}⁻¹ H_{>j,j} w_j (a least-squares solve, no Cholesky factor, no blocks)."""
    w = w.clone()
    cols = w.shape[1]
    for r in range(w.shape[0]):
        for j in range(cols):
            if not removed[r, j]:
                continue
            if j + 1 < cols:
                rest = slice(j + 1, cols)
                w[r, rest] += torch.linalg.solve(h[rest, rest], h[rest, j]) * w[r, j]
            w[r, j] = 0.0
    return w


@pytest.mark.parametrize("block", [4, 5, 128])  # blocks that split the 12 columns, unevenly, and one block
def test_sparsegpt_updates_are_the_optimal_brain_surgeons(block: int) -> None:
    w, x = layer()
    h = x.T @ x
    g = torch.Generator().manual_seed(3)
    removed = torch.rand(w.shape, generator=g) < 0.5
    got, got_removed = sparsegpt(w, h, 0.5, block=block, damp=0.01, mask=removed)
    want = brute_force_sequential_obs(w, dampened(h), removed)
    assert torch.equal(got_removed, removed) and bool((got[removed] == 0).all())
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)


def test_sparsegpt_first_column_is_the_exact_obs_of_one_weight() -> None:
    """Removing only w_0 of a row: the update is OBS's closed form over the whole row, -w_p / [H⁻¹]_pp · [H⁻¹]_:,p."""
    w, x = layer(rows=1)
    h = dampened(x.T @ x)
    removed = torch.zeros_like(w, dtype=torch.bool)
    removed[0, 0] = True
    got, _ = sparsegpt(w, x.T @ x, 0.0, damp=0.01, mask=removed)
    hinv = torch.linalg.inv(h)
    want = w[0] - w[0, 0] / hinv[0, 0] * hinv[:, 0]
    torch.testing.assert_close(got[0], want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(pattern: str) -> None:
    p = parse_pattern(pattern)
    w, x = layer(rows=16, cols=32, tokens=400)
    s = stats_of(x)
    sgpt, removed = sparsegpt(w, s.h, 0.5, p, block=8, damp=0.01)
    wanda = w * ~removal_mask(wanda_scores(w, s.col_sq_norms), 0.5, p, per_row=True)
    magnitude = w * ~removal_mask(w.abs(), 0.5, p, per_row=False)
    assert removed.float().mean() == pytest.approx(0.5, abs=1 / 64)
    if p.structured:
        assert (removed.view(16, -1, 4).sum(-1) == 2).all()
    e_sgpt, e_wanda, e_mag = error(w, sgpt, x), error(w, wanda, x), error(w, magnitude, x)
    assert e_sgpt < e_wanda < e_mag
    # and no better than the least-squares optimum for its own mask (each row's kept weights refitted)
    best = torch.zeros_like(w)
    for r in range(16):
        keep = ~removed[r]
        best[r, keep] = torch.linalg.lstsq(x[:, keep], x @ w[r]).solution
    assert error(w, best, x) <= e_sgpt + 1e-9


def test_sparsegpt_without_update_keeps_the_kept_weights() -> None:
    w, x = layer()
    new, removed = sparsegpt(w, x.T @ x, 0.5, update=False)
    torch.testing.assert_close(new, w * ~removed, rtol=0, atol=0)
    assert int(removed.sum()) == int(0.5 * w.numel()) + 1  # the reference's count: <= the int(s·n)-th, 0-based


def test_sparsegpt_mask_is_the_lowest_obs_errors_of_the_block() -> None:
    """In one block (the whole matrix), the removed weights are the int(s·n) + 1 lowest OBS errors (the reference's
    count) w_rj² / [H_{≥j,≥j}⁻¹]_jj: removing w_rj with the columns left of it held costs that much (brute-force
    inverses)."""
    w, x = layer()
    h = dampened(x.T @ x)
    cols = w.shape[1]
    obs = torch.stack([w[:, j] ** 2 / torch.linalg.inv(h[j:, j:])[0, 0] for j in range(cols)], dim=1)
    _, removed = sparsegpt(w, x.T @ x, 0.4, block=128, damp=0.01)
    assert int(removed.sum()) == int(0.4 * w.numel()) + 1
    assert obs[removed].max() <= obs[~removed].min()


@pytest.mark.parametrize("block", [8, 12, 128])  # several groups to a block: their masks see in-block updates
def test_sparsegpt_nm_mask_is_chosen_group_by_group_from_the_updated_weights(block: int) -> None:
    """N:M (SparseGPT's Section 3.4, the reference's `prunen`): each group of M columns is chosen when the sweep
    reaches it, from the weights as the OBS updates of the weights removed left of it have left them: in every
    row the M - N lowest OBS errors w_rj² / [H_{≥j,≥j}⁻¹]_jj of the group, w here from the brute-force surgeon. A
    mask taken from the block's weights before its in-block updates differs."""
    pattern = Pattern(2, 4)
    w, x = layer(rows=16, cols=24, tokens=300)
    h = dampened(x.T @ x)
    cols = w.shape[1]
    inv_diag = torch.stack([torch.linalg.inv(h[j:, j:])[0, 0] for j in range(cols)])  # (cols,)
    want = torch.zeros_like(w, dtype=torch.bool)
    for g in range(0, cols, pattern.m):
        now = brute_force_sequential_obs(w, h, want)  # columns >= g: updated by the removals left of g alone
        obs = now[:, g : g + pattern.m] ** 2 / inv_diag[None, g : g + pattern.m]
        drop = obs.argsort(dim=1)[:, : pattern.m - pattern.n]
        want[:, g : g + pattern.m].scatter_(1, drop, True)
    new, removed = sparsegpt(w, x.T @ x, 0.5, pattern, block=block, damp=0.01)
    assert torch.equal(removed, want)
    torch.testing.assert_close(new, brute_force_sequential_obs(w, h, want), rtol=1e-8, atol=1e-8)
    # the example tells the two apart: the groups chosen from each block's weights before its in-block updates
    stale = torch.zeros_like(want)
    for b in range(0, cols, block):
        before = brute_force_sequential_obs(w, h, want & (torch.arange(cols) < b)[None, :])  # at the block's start
        for g in range(b, min(b + block, cols), pattern.m):
            obs = before[:, g : g + pattern.m] ** 2 / inv_diag[None, g : g + pattern.m]
            stale[:, g : g + pattern.m].scatter_(1, obs.argsort(dim=1)[:, : pattern.m - pattern.n], True)
    assert int((stale != want).sum()) > 0
