"""One-shot pruning of one weight matrix from its calibration inputs: the layer-wise problems of magnitude pruning,
Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023), unstructured or N:M.

A Linear layer y = W x has W of shape (rows, cols) = (out_features, in_features); its calibration inputs are the
rows x (cols,) it saw on real tokens. `InputStats` gathers what the methods need from them: the squared column
norms ‖X_j‖₂² (Wanda) and H = Σ x xᵀ (SparseGPT), each at the reference code's scale (1/n and 2/n, n the sequences;
no method's result depends on it).

- Magnitude: score |W_ij|, the lowest per matrix removed.
- Wanda: score |W_ij| · ‖X_j‖₂, compared within each output row (every row loses the same share).
- SparseGPT: optimal-brain-surgeon updates. Columns are visited left to right; when weight (r, j) is removed, the
  row's weights right of j absorb its effect on the output, the least-squares optimum with the columns left of j
  held (the Cholesky factor of H⁻¹ gives each update in one row operation). The mask is chosen `block` columns at a
  time by the OBS error w² / [H⁻¹]_jj² (after the updates of earlier blocks), over the whole block, as the paper does,
  with the reference code's count: every error at most the int(numel · sparsity)-th smallest (0-based), one more than
  numel · sparsity in a block; weights of inputs that were always 0 are zeroed (bench/reference_oneshot.py is the
  reference written out; tests/unit/test_oneshot_reference.py holds the two equal).

N:M (e.g. 2:4): at most N weights kept in every M consecutive inputs of a row (NVIDIA's sparse tensor-core
layout, groups along the input dimension). Sparsity is then 1 - N/M.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from prunelab.errors import UserError


@dataclass(frozen=True)
class Pattern:
    """unstructured, or N:M (n kept in every m consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.m else float("nan")

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def parse_pattern(text: str | None) -> Pattern:
    """ "unstructured" (or None) | "N:M" with 0 < N < M."""
    if text is None or str(text) == "unstructured":
        return Pattern()
    parts = str(text).split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return Pattern(n, m)
    raise UserError(f"pruner.pattern={text!r}: unstructured, or N:M with 0 < N < M (e.g. 2:4, 4:8)")


def check_sparsity(pattern: Pattern, sparsity: float) -> None:
    """N:M fixes the sparsity: the run's `sparsity` must say the same (one error line otherwise)."""
    if pattern.structured and abs(sparsity - pattern.sparsity) > 1e-9:
        raise UserError(
            f"pruner.pattern={pattern} keeps {pattern.n} of every {pattern.m} weights: sparsity={pattern.sparsity:g}, "
            f"not {sparsity:g}"
        )


def check_groups(name: str, cols: int, pattern: Pattern) -> None:
    if pattern.structured and cols % pattern.m:
        raise UserError(f"{name}: {cols} inputs do not split into groups of {pattern.m} (pruner.pattern={pattern})")


# --- masks from scores ------------------------------------------------------------------------------------------
def lowest(scores: Tensor, k: int) -> Tensor:
    """Bool mask of the k lowest entries of `scores` (ties: the earlier flat position)."""
    out = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        out[torch.topk(scores.flatten().double(), k, largest=False, sorted=False).indices] = True
    return out.view_as(scores)


def row_lowest(scores: Tensor, k: int, chunk: int = 1 << 16) -> Tensor:
    """Bool mask of the k lowest entries of each row of `scores` (rows, cols), ties to the earlier column: the first
    k of a stable ascending sort of the row (locuslab/wanda's), found by each row's k-th value instead of a sort
    (a selection, O(cols): 2-3x faster on a CPU), every entry below it, then its equals from the left; a block of
    about `chunk` entries at a time, so that the selection's copies stay small next to the matrix."""
    out = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return out
    if k >= scores.shape[1] or bool(scores.isnan().any()):  # NaN: the sort's order (last), not the selection's
        return out.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :k], True)
    step = max(1, chunk // scores.shape[1])
    for r in range(0, scores.shape[0], step):
        block = scores[r : r + step]
        kth = block.kthvalue(k, dim=1, keepdim=True).values  # (rows, 1)
        below = block < kth
        ties = block == kth
        need = k - below.sum(1, keepdim=True)  # >= 1: the k-th value itself
        first = ties.cumsum(1, dtype=torch.int32) <= need  # the first `need` equals from the left
        out[r : r + step] = below | (ties & first)
    return out


def nm_candidates(scores: Tensor, pattern: Pattern) -> Tensor:
    """(rows, cols) -> bool: in each group of M consecutive columns of a row, its M - N lowest entries: the only
    entries an N:M mask may remove."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    drop = torch.topk(groups, pattern.m - pattern.n, dim=-1, largest=False).indices
    out = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, drop, True)
    return out.reshape(rows, cols)


def removal_mask(scores: Tensor, sparsity: float, pattern: Pattern, per_row: bool) -> Tensor:
    """Bool (rows, cols), True = removed: exactly round(sparsity * n) of the lowest scores per matrix, or per row
    (`per_row`, Wanda's: int(sparsity * cols) of each row, ties to the earlier column, as the reference's stable
    sort); under N:M the M - N lowest of every group (and `sparsity` must be 1 - N/M)."""
    if pattern.structured:
        return nm_candidates(scores, pattern)
    if per_row:
        return row_lowest(scores, int(sparsity * scores.shape[1]))
    return lowest(scores, round(sparsity * scores.numel()))


def wanda_scores(weight: Tensor, col_sq_norms: Tensor) -> Tensor:
    """|W_ij| · ‖X_j‖₂ (Sun et al. 2023, Eq. 1) from the inputs' squared column norms Σ_t x_tj²."""
    return weight.abs().float() * col_sq_norms.float().sqrt()[None, :]


# --- calibration statistics -------------------------------------------------------------------------------------
class InputStats:
    """One Linear's inputs x over the calibration set, as the reference implementations keep them: H = 2/n Σ x xᵀ
    (fp32), IST-DASLab/sparsegpt's `add_batch`, or with `full=False` only the squared column norms 1/n Σ x_j²,
    locuslab/wanda's `WrappedGPT.add_batch`; n the sequences seen, a running average rescaled as each batch comes.
    No solver's result depends on the scale, but summing in the references' order gives their statistics to the last
    bit and so their masks exactly (a rounding apart, near-tied scores cross the threshold and, in SparseGPT, move
    the rest of their row). `tokens`: the rows x seen."""

    def __init__(self, cols: int, full: bool, device: torch.device | str = "cpu"):
        self.full = full
        self.tokens = 0
        self.sequences = 0
        self.h = torch.zeros((cols, cols) if full else (cols,), dtype=torch.float32, device=device)

    @torch.no_grad()
    def add(self, x: Tensor, sequences: int = 1) -> None:
        """x (N, cols): the input rows (real tokens only) of `sequences` sequences."""
        self.tokens += x.shape[0]
        self.h *= self.sequences / (self.sequences + sequences)
        self.sequences += sequences
        if self.full:
            x = math.sqrt(2 / self.sequences) * x.float()
            self.h += x.T @ x
        else:
            self.h += torch.linalg.vector_norm(x.float(), dim=0) ** 2 / self.sequences

    def copy(self) -> InputStats:
        """The same statistics in a matrix of their own (a solver may overwrite its H)."""
        out = copy.copy(self)
        out.h = self.h.clone()
        return out

    @property
    def col_sq_norms(self) -> Tensor:
        return self.h.diagonal() if self.full else self.h


# --- SparseGPT --------------------------------------------------------------------------------------------------
def damped(h: Tensor, damp: float, dtype: torch.dtype = torch.float64, inplace: bool = False) -> Tensor:
    """H + λI with λ = damp × mean(diag H), in `dtype`; inputs that were always 0 (H_jj = 0) get 1 on the diagonal
    so that H is invertible (their weights cannot change any output seen in calibration). `inplace`: in `h` itself
    when it already has `dtype`."""
    h = h if inplace and h.dtype == dtype else h.to(dtype, copy=True)
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    # the mean of a contiguous copy of the diagonal, as the reference takes it (torch.diag): a mean over the strided
    # view sums in another order, and λ one rounding apart moves near-tied scores across the threshold
    h.diagonal().add_(damp * torch.diag(h).mean())
    return h


def inverse_cholesky(h: Tensor, inplace: bool = False) -> Tensor:
    """The upper Cholesky factor U of H⁻¹ (H⁻¹ = Uᵀ U). Row j of U, divided by U_jj, is the OBS update of the
    columns ≥ j when weight j is removed with the columns < j held. `inplace`: computed in `h`'s own memory (the
    three factorisations overwrite it in turn), so the solve needs no (cols, cols) matrix besides H."""
    a = h if inplace else h.clone()
    try:
        torch.linalg.cholesky(a, out=a)  # L (H = L Lᵀ), upper triangle zeroed
        torch.cholesky_inverse(a, out=a)  # H⁻¹
        return torch.linalg.cholesky(a, upper=True, out=a)  # U
    except RuntimeError as e:  # torch.linalg.LinAlgError: not positive definite even after damping
        raise UserError(
            "SparseGPT: the calibration Hessian is not positive definite; raise pruner.damp or the calibration size"
        ) from e


def block_mask(scores: Tensor, sparsity: float) -> Tensor:
    """SparseGPT's unstructured mask of one block, the reference's rule (IST-DASLab/sparsegpt, fasterprune): every
    score at most the int(numel · sparsity)-th smallest (0-based), i.e. int(numel · sparsity) + 1 entries when no
    two scores tie. Nothing at sparsity 0."""
    k = int(scores.numel() * sparsity)
    if sparsity <= 0 or k >= scores.numel():
        return torch.full_like(scores, sparsity > 0, dtype=torch.bool)
    return scores <= torch.kthvalue(scores.flatten(), k + 1).values


@torch.no_grad()
def sparsegpt(
    weight: Tensor,
    h: Tensor,
    sparsity: float,
    pattern: Pattern = Pattern(),
    block: int = 128,
    damp: float = 0.01,
    update: bool = True,
    mask: Tensor | None = None,
    overwrite_h: bool = False,
) -> tuple[Tensor, Tensor]:
    """SparseGPT on one matrix: weight (rows, cols), h ∝ Σ x xᵀ (cols, cols). -> (new weight in the input dtype,
    removed: bool (rows, cols)). `update=False`: the same mask choice, the kept weights unchanged. `mask` (bool,
    True = removed): use this mask instead of choosing one (the updates alone). Computed in fp32 (as the reference
    does), or in fp64 for fp64 inputs. `overwrite_h`: `h` is used as the solve's workspace (it holds U after), so
    that pruning a matrix needs one (cols, cols) matrix in all."""
    rows, cols = weight.shape
    if pattern.structured and block % pattern.m:
        raise UserError(f"SparseGPT: pruner.block={block} must be a multiple of the pattern's M={pattern.m}")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    w = weight.to(dtype, copy=True)
    w[:, h.diagonal() == 0] = 0.0  # inputs always 0: their weights zeroed (and so removed), as the reference does
    u = inverse_cholesky(damped(h, damp, dtype, inplace=overwrite_h), inplace=True)
    removed = torch.zeros(rows, cols, dtype=torch.bool, device=weight.device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        d = u1.diagonal()
        if mask is not None:
            r1 = mask[:, i1:i2].clone()
        elif pattern.structured:
            r1 = torch.zeros_like(w1, dtype=torch.bool)  # chosen group by group below, from updated weights
        else:
            r1 = block_mask(w1**2 / d[None, :] ** 2, sparsity)
        for j in range(i2 - i1):
            if mask is None and pattern.structured and j % pattern.m == 0:
                g = slice(j, j + pattern.m)
                r1[:, g] = nm_candidates(w1[:, g] ** 2 / d[None, g] ** 2, pattern)
            q = torch.where(r1[:, j], 0.0, w1[:, j])
            if update:
                e = (w1[:, j] - q) / d[j]  # (rows,)
                w1[:, j:] -= e[:, None] * u1[j, j:][None, :]
                err[:, j] = e
            w1[:, j] = q
        w[:, i1:i2] = w1
        removed[:, i1:i2] = r1
        if update:
            w[:, i2:] -= err @ u[i1:i2, i2:]
    return w.to(weight.dtype), removed
