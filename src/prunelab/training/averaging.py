"""Checkpoint averaging (fairseq's `scripts/average_checkpoints.py`), made safe for pruned models.

`average_checkpoints(paths, out)` writes to `out` one Lightning checkpoint whose weights are the arithmetic mean of
the weights of the N checkpoints `paths` (in training order: the last one is the reference), and returns `out`.

The contract, key by key of the checkpoints' `state_dict`:

- every floating-point tensor of the model (`model.*`: parameters and float buffers) is the arithmetic mean over
  the N checkpoints, computed in float64 and stored in the last checkpoint's dtype;
- non-float tensors (integer or bool buffers) are the last checkpoint's, as in fairseq;
- the gate buffers of heads and components (keys ending in `.gate`, `.head_gate`, `.head_ids`) are the last
  checkpoint's, not averaged: they encode structure (which heads/components are switched off), not weights;
- the pruner's state (every `pruner.*` key: masks, θ_0/rewind snapshots, importance statistics) is the last
  checkpoint's. Its masks are then re-applied: for each mask buffer `pruner.mask__<name>` (see
  `prunelab.training.io.mask_key`), the averaged parameter `model.<name>` is multiplied by the last checkpoint's
  mask, so an entry pruned in the last checkpoint is exactly 0 even where earlier checkpoints (taken before that
  entry was pruned) held a value, and the sparsity of the average is exactly the last checkpoint's;
- everything outside `state_dict` (epoch, global_step, optimizer and scheduler states, loops, callbacks,
  hyper-parameters) is the last checkpoint's, as in fairseq; the key `prunelab_averaged_from` lists the averaged
  files, in order.

The N checkpoints must have the same structure: the same `state_dict` keys, and for each key the same shape and
dtype. Checkpoints that differ (heads or components removed between them, another model, another pruner) are
refused with a one-line `UserError` naming the first differing key, as are an empty list and a file that is not a
prunelab checkpoint. Checkpoints are read with `torch.load(weights_only=True)` one at a time (memory: the running
sums, the last checkpoint and the one being read) and the result is written with `torch.save` (to a temporary file
next to `out`, then renamed).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from prunelab.errors import UserError
from prunelab.training.io import MODEL_PREFIX, checkpoint_masks, is_rank_zero, mask_key, read_state, write_json

log = logging.getLogger("prunelab")

GATE_SUFFIXES = (".gate", ".head_gate", ".head_ids")  # structural buffers: taken from the last checkpoint


def averaged_key(key: str, value: Tensor) -> bool:
    """Whether a state_dict entry is averaged: the model's float tensors except its gate buffers."""
    return key.startswith(MODEL_PREFIX) and torch.is_floating_point(value) and not key.endswith(GATE_SUFFIXES)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = read_state(path)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"average_checkpoints: {path}: not a prunelab checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"average_checkpoints: {path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


Layout = dict[str, tuple[torch.Size, torch.dtype]]  # state_dict key -> (shape, dtype)


def _layout(state: dict[str, Tensor]) -> Layout:
    return {k: (v.shape, v.dtype) for k, v in state.items()}


def _check_same_structure(ref: Layout, ref_path: Path, state: dict[str, Tensor], path: Path) -> None:
    """One-line UserError at the first key, shape or dtype where `state` differs from `ref` (the first's)."""
    if ref.keys() != state.keys():
        only_ref, only_new = sorted(ref.keys() - state.keys()), sorted(state.keys() - ref.keys())
        where = f"{only_ref[0]!r} only in {ref_path}" if only_ref else f"{only_new[0]!r} only in {path}"
        raise UserError(
            f"average_checkpoints: {ref_path} and {path} hold different parameters ({where}; "
            f"{len(only_ref) + len(only_new)} keys differ): heads or components removed between them?"
        )
    for k, (shape, dtype) in ref.items():
        w = state[k]
        if shape != w.shape:
            raise UserError(
                f"average_checkpoints: {k!r} has shape {tuple(shape)} in {ref_path} but {tuple(w.shape)} in {path}"
                " (heads or components removed between them?)"
            )
        if dtype != w.dtype:
            raise UserError(f"average_checkpoints: {k!r} is {dtype} in {ref_path} but {w.dtype} in {path}")


@torch.no_grad()
def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """Average the weights of the Lightning checkpoints `paths` (the last is the reference) into `out`; returns
    `out`. See the module docstring for what is averaged, what is taken from the last checkpoint, and the masks."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("average_checkpoints: no checkpoints to average (an empty list)")
    out = Path(out)
    first_path = paths[0]
    sums: dict[str, Tensor] = {}
    ref: Layout = {}
    last: dict[str, Any] = {}
    first_masks: dict[str, Tensor] = {}
    mask_changed: set[str] = set()
    for i, path in enumerate(paths):
        ckpt = _read_checkpoint(path)
        state: dict[str, Tensor] = ckpt["state_dict"]
        if i == 0:
            ref = _layout(state)
            first_masks = checkpoint_masks(state)
            sums = {k: v.to(torch.float64, copy=True) for k, v in state.items() if averaged_key(k, v)}
        else:
            _check_same_structure(ref, first_path, state, path)
            for k, s in sums.items():
                s.add_(state[k].to(torch.float64))
            mask_changed |= {n for n, m in checkpoint_masks(state).items() if not torch.equal(m, first_masks[n])}
        if i == len(paths) - 1:
            last = ckpt
    state = last["state_dict"]
    averaged = {k: (s / len(paths)).to(state[k].dtype) for k, s in sums.items()}
    for name, mask in checkpoint_masks(state).items():
        key = MODEL_PREFIX + name
        if key not in averaged:
            raise UserError(
                f"average_checkpoints: {paths[-1]} has the mask {mask_key(name)!r} but no float parameter {key!r}"
            )
        if mask.shape != averaged[key].shape:
            raise UserError(
                f"average_checkpoints: {paths[-1]}: mask {mask_key(name)!r} has shape {tuple(mask.shape)}, "
                f"its parameter {tuple(averaged[key].shape)}"
            )
        averaged[key] = averaged[key] * mask.to(averaged[key].dtype)
    if mask_changed:
        log.info(
            "average_checkpoints: the masks of %d matrices changed between %s and %s; the last checkpoint's are "
            "applied to the average",
            len(mask_changed),
            first_path,
            paths[-1],
        )
    last["state_dict"] = {k: averaged.get(k, v) for k, v in state.items()}
    last["prunelab_averaged_from"] = [str(p) for p in paths]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(last, tmp)
    os.replace(tmp, out)
    log.info("averaged %d checkpoints (%s ... %s) into %s", len(paths), first_path, paths[-1], out)
    return out


class ValidationSnapshots(L.Callback):
    """The checkpoints `checkpoints.average_last=N` may average, under the rules of best-checkpoint selection:
    at each validation during fit whose monitored score is finite (the round's mask is final; NaN while a gradual
    mask still changes), the weights are saved as `step{S}.ckpt` in `folder` and the score recorded in
    `folder/scores.json` (which a resumed round reads back). Only what can still be averaged is kept: the N
    checkpoints ending at the best so far, and the latest N-1 (a later best would end its window among them)."""

    def __init__(self, folder: Path, monitor: str, n: int):
        self.folder, self.monitor, self.n = Path(folder), monitor, n

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return  # the mask is not final yet: not a candidate for the best checkpoint, nor for the average
        step = int(trainer.global_step)
        trainer.save_checkpoint(self.folder / f"step{step}.ckpt", weights_only=True)
        if not is_rank_zero():
            return
        scores = {**validation_scores(self.folder), step: float(value)}
        keep = set(averaging_window(scores, self.n)) | set(sorted(scores)[-(self.n - 1) :])  # n >= 2 (validate)
        for s in [s for s in scores if s not in keep]:
            (self.folder / f"step{s}.ckpt").unlink(missing_ok=True)
            del scores[s]
        write_json(self.folder / "scores.json", {str(k): v for k, v in sorted(scores.items())})


def validation_scores(folder: Path) -> dict[int, float]:
    """{step: monitored score} of the checkpoints ValidationSnapshots keeps in `folder`."""
    f = Path(folder) / "scores.json"
    return {int(k): float(v) for k, v in json.loads(f.read_text()).items()} if f.is_file() else {}


def averaging_window(scores: dict[int, float], n: int) -> list[int]:
    """The steps to average: the best validation (the first of equal bests, as the best-checkpoint choice keeps
    it) and the n-1 final-mask validations before it, in training order."""
    if not scores:
        return []
    steps = sorted(scores)
    best = max(steps, key=lambda s: (scores[s], -s))
    i = steps.index(best)
    return steps[max(0, i - n + 1) : i + 1]


__all__ = [
    "GATE_SUFFIXES",
    "ValidationSnapshots",
    "average_checkpoints",
    "averaged_key",
    "averaging_window",
    "validation_scores",
]
