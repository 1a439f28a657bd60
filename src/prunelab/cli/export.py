"""`prunelab export RUN_DIR`: the pruned model of a run, its masked matrices in sparse CSC form.

The file (`model.sparse.pt`, a plain torch file that loads with weights_only=True) holds the model
config, dense tensors for everything unpruned, and torch.sparse_csc tensors with int32 indices for every
masked matrix: the CSC layout whose size results.json reports.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from prunelab.cli.results import read_completed_run, read_state
from prunelab.errors import UserError
from prunelab.models import Transformer, TransformerConfig

FORMAT = "prunelab-sparse-v1"
MASK_PREFIX = "pruner.mask__"


def _csc32(w: torch.Tensor) -> torch.Tensor:
    s = w.to_sparse_csc()
    return torch.sparse_csc_tensor(s.ccol_indices().int(), s.row_indices().int(), s.values(), s.shape)


def export_run(run_dir: Path, out: Path | None = None) -> tuple[Path, dict[str, Any]]:
    results = read_completed_run(run_dir)
    state = read_state(results["best_checkpoint"])["state_dict"]
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    model_cfg = {k: v for k, v in results["config"]["model"].items() if k in fields}
    model_cfg["vocab_size"] = int(state["model.embed.weight"].shape[0])
    model_cfg["pad_id"] = int(results.get("pad_id", 0))
    dense, sparse = {}, {}
    for key, value in state.items():
        if not key.startswith("model."):
            continue
        name = key.removeprefix("model.")
        mask_key = MASK_PREFIX + name.replace(".", "__")
        if mask_key in state:
            sparse[name] = _csc32(value * state[mask_key])
        else:
            dense[name] = value
    out = out or run_dir / "model.sparse.pt"
    torch.save({"format": FORMAT, "config": model_cfg, "dense": dense, "sparse": sparse}, out)
    stats = {
        "file": str(out),
        "file_bytes": out.stat().st_size,
        "sparse_matrices": len(sparse),
        "nonzeros": sum(int(t.values().numel()) for t in sparse.values()),
    }
    return out, stats


def load_sparse(path: Path) -> Transformer:
    """Rebuild the model from an export; masked matrices come back dense with their zeros."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "sparse CSC support is in beta"
        blob = read_state(path)
    if blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a prunelab sparse export")
    model = Transformer(TransformerConfig(**blob["config"]))
    state = dict(blob["dense"])
    state.update({n: t.to_dense() for n, t in blob["sparse"].items()})
    model.load_state_dict(state)
    return model.eval()
