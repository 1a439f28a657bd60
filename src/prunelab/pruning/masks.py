"""Which weights can be pruned, magnitude masks, and what a mask costs in memory."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def prunable_weights(model: nn.Module, include_embeddings: bool = False) -> dict[str, nn.Parameter]:
    """Weight matrices of the network: Linear weights (and the embedding if asked). Never biases or
    LayerNorm parameters, which are 1-D. A language model's separate output projection (`lm_head`) is its output
    embedding: pruned only with the embeddings, as the tied one is (and as Wanda and SparseGPT leave it)."""
    out = {}
    for mod_name, mod in model.named_modules():
        embedding = isinstance(mod, nn.Embedding) or mod_name == "lm_head"
        if (isinstance(mod, nn.Linear) and not embedding) or (include_embeddings and embedding):
            out[f"{mod_name}.weight" if mod_name else "weight"] = mod.weight
    return out


@torch.no_grad()
def keep_top(
    scores: dict[str, Tensor], masks: dict[str, Tensor], sparsity: float, scope: str = "per_matrix"
) -> dict[str, Tensor]:
    """New masks that remove the `sparsity` fraction of lowest-scoring entries, per matrix or globally.

    Exactly round(sparsity * n) entries are masked (per matrix, or over all matrices together). Scores are
    used as given (signed scores rank as they are); already-masked entries rank below every surviving one,
    so masks only ever shrink.
    """
    kept = {n: masks[n].bool() for n in scores}
    ranked = {
        n: torch.where(kept[n], s.float(), torch.full_like(s, -torch.inf, dtype=torch.float32))
        for n, s in scores.items()
    }
    if scope == "per_matrix":
        return {
            n: (_keep_largest(s, round(sparsity * s.numel())) & kept[n]).to(masks[n].dtype) for n, s in ranked.items()
        }
    if scope == "global":
        flat = torch.cat([s.flatten() for s in ranked.values()])
        keep = _keep_largest(flat, round(sparsity * flat.numel()))
        out, i = {}, 0
        for n, s in ranked.items():
            out[n] = (keep[i : i + s.numel()].view_as(s) & kept[n]).to(masks[n].dtype)
            i += s.numel()
        return out
    raise ValueError(f"unknown ranking scope {scope!r}: use per_matrix or global")


def magnitude_masks(
    weights: dict[str, Tensor], masks: dict[str, Tensor], sparsity: float, scope: str = "per_matrix"
) -> dict[str, Tensor]:
    """keep_top with the magnitude |w| as the score: the largest weights survive."""
    return keep_top({n: w.abs() for n, w in weights.items()}, masks, sparsity, scope)


def _keep_largest(scores: Tensor, n_prune: int) -> Tensor:
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        idx = torch.topk(scores.flatten(), n_prune, largest=False).indices
        mask.view(-1)[idx] = False
    return mask


def csc_bytes(mask: Tensor, value_bytes: int = 4, index_bytes: int = 4) -> int:
    """Bytes to store a matrix in compressed sparse column form: values + row indices + column pointers."""
    nnz = int(mask.count_nonzero())
    cols = mask.shape[1] if mask.dim() == 2 else 1
    return nnz * (value_bytes + index_bytes) + (cols + 1) * index_bytes
