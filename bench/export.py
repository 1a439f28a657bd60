"""Export size: the bytes of `prunelab export`'s file layouts for transformer_base's weight matrices at 90%
sparsity (magnitude masks, exactly 90% per matrix), each saved with torch.save, against the dense fp32 file."""

from __future__ import annotations

import io

import torch
from harness import Figure

from prunelab.models import build_transformer
from prunelab.models.sparse_format import pack_state, to_csc32  # to_csc32: the layout of --format csc
from prunelab.pruning import MagnitudePruner


def _saved_bytes(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


BASE_SHAPE = {"vocab_size": 32000, "d_model": 512, "n_heads": 8, "d_ff": 2048, "enc_layers": 6, "dec_layers": 6}


def sizes(sparsity: float = 0.9, shape: dict[str, int] | None = None) -> list[Figure]:
    """The file / dense ratios of each layout, transformer_base's shape unless `shape` is given."""
    torch.manual_seed(0)
    shape = shape or BASE_SHAPE
    model = build_transformer(**shape)
    pruner = MagnitudePruner(sparsity=sparsity)
    pruner.attach(model)
    pruner.prune_to(model, sparsity)
    weights = {n: w.detach() for n, w in pruner._weights.items()}
    masks = pruner.masks
    dense = _saved_bytes({n: w.clone() for n, w in weights.items()})
    name = "transformer_base" if shape == BASE_SHAPE else "a reduced transformer"
    note = f"{len(weights)} weight matrices of {name} at {sparsity:.0%}, saved; dense fp32 file {dense:,} B"
    rows = [
        ("bitmask + values, fp32", _saved_bytes(pack_state(weights, masks, torch.float32))),
        ("bitmask + values, fp16", _saved_bytes(pack_state(weights, masks, torch.float16))),
        ("CSC, int32 indices, fp32", _saved_bytes({n: to_csc32(w * masks[n]) for n, w in weights.items()})),
    ]
    goal = {"bitmask + values, fp32": 0.14}
    return [
        Figure("export", f"file / dense fp32: {name}", b / dense, goal=goal.get(name), lower_is_better=True, note=note)
        for name, b in rows
    ]
