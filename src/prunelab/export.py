"""A run's pruned model in a compact sparse file (`prunelab export RUN_DIR`, `--format bitmask|csc`), and the
model again from such a file (`load_sparse`); `--format 2:4` files for PyTorch's semi-structured kernels and their
reader (`load_2of4`, on a GPU: models.semi_structured); `--format hf` (hf.export). Floor: above training/ (it loads
runs), beside the studies and cli/.

Both formats are plain torch files that load with weights_only=True and hold the model's whole state (every
`model.*` key of the tested checkpoint: `head_ids` buffers of removed heads, a classifier's `head.*`, ...):

- bitmask (default), format key "prunelab-bitmask-v1": every masked matrix as a bitmask of its kept entries
  plus the kept values (`prunelab.models.sparse_format`), about 0.13 of the dense bytes at 90% sparsity in fp32.
  {"format", "config", "model_config", "state": sparse_format.pack_state(...)}
- csc, format key "prunelab-sparse-v1": every masked matrix as a torch.sparse_csc tensor with int32 indices, the
  layout whose size results.json reports (at least 0.2 of the dense bytes at 90% sparsity in fp32).
  {"format", "config", "model_config", "dtype", "dense", "sparse"}

`--dtype` is the storage dtype of every floating tensor, the kept values and the dense tensors alike (integer
buffers are never cast); the file records it, and loading casts back to fp32. fp32 reloads bit-identically.

"config" holds the TransformerConfig fields (as in the first version of the format); "model_config" the run's
model config as results.json has it plus vocab_size, pad_id (and num_classes for a classifier).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from prunelab.errors import UserError
from prunelab.hf.export import export_hf
from prunelab.models import Transformer, TransformerConfig
from prunelab.models.semi_structured import DTYPES as SEMI_DTYPES
from prunelab.models.semi_structured import FORMAT_2OF4, cuda_2of4_problem, pack_2of4, to_2of4
from prunelab.models.sparse_format import dense_bytes, dtype_name, pack_state, state_bytes, to_csc32, unpack_state
from prunelab.models.surgery import load_state_dict_with_heads
from prunelab.training import load_run
from prunelab.training.build import build_model
from prunelab.training.io import checkpoint_masks, read_state

FORMAT = "prunelab-sparse-v1"  # CSC
BITMASK_FORMAT = "prunelab-bitmask-v1"
FORMATS = {"bitmask": BITMASK_FORMAT, "csc": FORMAT}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _model_state(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor], dict[str, Tensor]]:
    """(config, model_config, state, masks) of a completed run's tested checkpoint, rebuilt through `load_run`
    (so the export holds exactly what the run's model loads); state and masks keyed by the model's own
    parameter names (no `model.` prefix). model_config: {"model": the run's model config, "args": what the
    model took from the data}, which `training.build.build_model` rebuilds it from."""
    run = load_run(run_dir)
    state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    masks = {n: m for n, m in checkpoint_masks(run.state).items() if n in state}
    raw = OmegaConf.to_container(run.config.model, resolve=True)
    args = dict(run.results.get("model_args") or {})
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    config = {k: v for k, v in {**raw, **args}.items() if k in fields}  # the first version's TransformerConfig
    return config, {"model": raw, "args": args}, state, masks


def export_run(
    run_dir: Path, out: Path | None = None, fmt: str = "bitmask", dtype: str = "fp32"
) -> tuple[Path, dict[str, Any]]:
    """Write the export; returns its path and stats: file_bytes (the file on disk), dense_bytes (the model's
    state dense in fp32), ratio (file_bytes / dense_bytes), payload_bytes (the tensors' bytes without the
    file's own overhead), sparse_matrices and nonzeros (kept entries stored for them). A Hugging Face folder
    instead: `prunelab export --format hf` (`export_hf_run`)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)} (a Hugging Face folder: hf)")
    if dtype not in DTYPES:
        raise UserError(f"unknown export dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    config, model_config, state, masks = _model_state(run_dir)
    dt = DTYPES[dtype]
    head = {"format": FORMATS[fmt], "config": config, "model_config": model_config}
    try:
        if fmt == "bitmask":
            packed = pack_state(state, masks, dt)
            blob = {**head, "state": packed}
            nonzeros = sum(int(p["values"].numel()) for p in packed["sparse"].values())
            payload = state_bytes(packed)
        else:
            dense, sparse = {}, {}
            for name, value in state.items():
                if name in masks:
                    if masks[name].shape != value.shape:
                        raise ValueError(f"mask shape {tuple(masks[name].shape)} != weight shape {tuple(value.shape)}")
                    sparse[name] = to_csc32((value * masks[name]).to(dt))
                else:
                    dense[name] = value.to(dt) if value.is_floating_point() else value
            blob = {**head, "dtype": dtype_name(dt), "dense": dense, "sparse": sparse}
            nonzeros = sum(int(t.values().numel()) for t in sparse.values())
            payload = sum(_nbytes(t) for t in dense.values()) + sum(
                _nbytes(t.values()) + _nbytes(t.row_indices()) + _nbytes(t.ccol_indices()) for t in sparse.values()
            )
    except ValueError as e:
        raise UserError(f"{run_dir}: cannot export: {e}") from None
    out = out or run_dir / "model.sparse.pt"
    torch.save(blob, out)
    file_bytes = out.stat().st_size
    dense = dense_bytes(state)
    stats = {
        "file": str(out),
        "format": fmt,
        "dtype": dtype,
        "file_bytes": file_bytes,
        "dense_bytes": dense,
        "ratio": file_bytes / dense,
        "payload_bytes": payload,
        "sparse_matrices": len(masks),
        "nonzeros": nonzeros,
    }
    return out, stats


def read_export(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(model config, dense fp32 state dict) of an export in either format."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "sparse CSC support is in beta"
        blob = read_state(path)
    fmt = blob.get("format") if isinstance(blob, dict) else None
    if fmt == BITMASK_FORMAT:
        try:
            state = unpack_state(blob["state"])
        except (KeyError, ValueError) as e:
            raise UserError(f"{path}: a damaged bitmask export ({e})") from None
    elif fmt == FORMAT:
        state = {n: t.float() if t.is_floating_point() else t for n, t in blob["dense"].items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state.update({n: t.to_dense().float() for n, t in blob["sparse"].items()})
    else:
        raise UserError(f"{path} is not a prunelab sparse export")
    return blob.get("model_config") or blob["config"], state


def _build_model(config: dict[str, Any], state: dict[str, Tensor]) -> Transformer:
    """The model an export describes, with the state loaded, built as in training (`build_model` from the run's
    model config and data arguments); removed heads and components are removed first (`head_ids` buffers,
    missing parameters). Files of the first version hold only the TransformerConfig fields."""
    if "model" in config and "args" in config:
        model = build_model(OmegaConf.create(config["model"]), config["args"])
    else:
        fields = {f.name for f in dataclasses.fields(TransformerConfig)}
        model = Transformer(TransformerConfig(**{k: v for k, v in config.items() if k in fields}))
    load_state_dict_with_heads(model, state)
    return model


def load_sparse(path: Path) -> Transformer:
    """Rebuild the model from an export (either format); masked matrices come back dense with their zeros."""
    config, state = read_export(path)
    return _build_model(config, state).eval()


def load_2of4(path: Path, device: str = "cuda") -> nn.Module:
    """The model of a `--format 2:4` export on `device`, its 2:4 Linear weights as semi-structured sparse tensors."""
    problem = cuda_2of4_problem(device)
    if problem:
        raise UserError(f"{path}: {problem}")
    blob: dict[str, Any] = read_state(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT_2OF4:
        raise UserError(f"{path} is not a prunelab 2:4 export")
    dtype = SEMI_DTYPES[blob["dtype"]]
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state"].items()}
    model = _build_model(blob["model_config"], state).eval().to(device=device, dtype=dtype)
    to_2of4(model, blob["semi_structured"])
    return model


HF_FORMAT = "hf"  # a Hugging Face folder, not a prunelab file (export_hf_run)
SEMI_FORMAT = "2:4"  # dense fp16/bf16 weights to be turned into semi-structured tensors on a GPU (export_2of4_run)


def export(
    run_dir: Path, out: Path | None = None, fmt: str = "bitmask", dtype: str = "fp32"
) -> tuple[Path, dict[str, Any]]:
    """What `prunelab export` writes: `prunelab.export.export_run`, or export_hf_run for fmt="hf"."""
    if fmt == HF_FORMAT:
        return export_hf_run(run_dir, out, dtype)
    if fmt == SEMI_FORMAT:
        return export_2of4_run(run_dir, out, dtype)
    return export_run(run_dir, out, fmt=fmt, dtype=dtype)


def export_2of4_run(run_dir: Path, out: Path | None = None, dtype: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """`--format 2:4`: a run with 2:4 masks -> a file for `load_2of4`, which runs its
    2:4 Linear weights with PyTorch's semi-structured sparse kernels on a GPU (default `RUN_DIR/model.2of4.pt`). The
    kernels take fp16 or bf16: `dtype` bf16 is kept, anything else is stored as fp16. Stats: file, format, dtype,
    file_bytes, semi_structured (the matrices the kernels take), dense_2of4 (2:4 matrices whose shape they cannot
    take, left dense)."""
    kept = dtype if dtype in SEMI_DTYPES else "fp16"
    config, model_config, state, masks = _model_state(run_dir)
    try:
        packed, sparse, dense = pack_2of4(state, masks, SEMI_DTYPES[kept])
    except ValueError as e:
        raise UserError(f"{run_dir}: cannot export as 2:4: {e}") from None
    blob = {
        "format": FORMAT_2OF4,
        "config": config,
        "model_config": model_config,
        "dtype": kept,
        "state": packed,
        "semi_structured": sparse,
    }
    out = out or run_dir / "model.2of4.pt"
    torch.save(blob, out)
    stats = {
        "file": str(out),
        "format": SEMI_FORMAT,
        "dtype": kept,
        "file_bytes": out.stat().st_size,
        "semi_structured": sparse,
        "dense_2of4": dense,
    }
    return out, stats


def export_hf_run(run_dir: Path, out: Path | None = None, dtype: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """`--format hf`: a run whose model was imported from Hugging Face (`model.path`, model=hf or one of its aliases)
    -> that folder's format again, in `out` (default `RUN_DIR/hf`): the run's tested model with its masks
    (`checkpoint_masks`) as weight * mask, gates at 0 and removed heads as zeros, fp32; a classifier's label names
    from results.json (`labels`). Stats: file (the folder), format, dtype, source, file_bytes (its
    model.safetensors), dense_bytes, ratio, sparse_matrices (masks folded in), nonzeros (their kept entries)."""
    if dtype != "fp32":
        raise UserError(f"--format hf writes fp32 weights (--dtype {dtype} is for the bitmask and csc formats)")
    run = load_run(run_dir)
    source = OmegaConf.select(run.config, "model.path", default=None)
    if not source:
        raise UserError(
            f"{run_dir}: the run's model was not imported from Hugging Face (no model.path; --format hf is for "
            "model=hf runs): use --format bitmask or csc"
        )
    if not (Path(source) / "config.json").is_file():
        raise UserError(f"{run_dir}: the run's model.path={source} is no longer a Hugging Face model folder")
    state = run.model.state_dict()
    masks = {n: m for n, m in checkpoint_masks(run.state).items() if n in state}
    labels = run.results.get("labels")  # a classification run's label names (translation runs have none)
    out = export_hf(run.model, source, out or run.dir / "hf", masks=masks, labels=labels)
    file_bytes = (out / "model.safetensors").stat().st_size
    dense = dense_bytes(state)
    stats = {
        "file": str(out),
        "format": HF_FORMAT,
        "dtype": dtype,
        "source": str(source),
        "file_bytes": file_bytes,
        "dense_bytes": dense,
        "ratio": file_bytes / dense,
        "sparse_matrices": len(masks),
        "nonzeros": sum(int(m.count_nonzero()) for m in masks.values()),
    }
    return out, stats
