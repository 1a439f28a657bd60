"""A run's files: results.json (the one file sweeps, plots and notes read; written atomically, also on failure), weights
files read and written with torch, and the key names of a prunelab checkpoint's state_dict (the task's network under
`model.`, its pruner's masks and snapshots under `pruner.`). Training floor: the lowest module of training/, read by
the trunk, checkpoint averaging, load_run, the export and the studies."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.errors import UserError
from prunelab.pruning.base import MASK_PREFIX, mask_buffer

if TYPE_CHECKING:  # torch is imported where a weights file is read or written
    from torch import Tensor

MODEL_PREFIX = "model."  # the task holds the network as `model`: its keys in a checkpoint's state_dict
PRUNER_PREFIX = "pruner."  # and its pruner as `pruner` (masks, snapshots)


def mask_key(param_name: str) -> str:
    """The checkpoint key of a parameter's mask: `enc.0.ff.fc1.weight` -> `pruner.mask__enc__0__ff__fc1__weight`."""
    return PRUNER_PREFIX + mask_buffer(param_name)


def checkpoint_masks(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """{parameter name: mask} of every mask a checkpoint's state_dict holds."""
    prefix = PRUNER_PREFIX + MASK_PREFIX
    return {k.removeprefix(prefix).replace("__", "."): v for k, v in state.items() if k.startswith(prefix)}


def is_rank_zero() -> bool:
    """False in the extra processes of a DDP run, which print no errors and write no results."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0


class ResultsWriter:
    """The run's results.json. `elapsed`: the run's wall time so far (across restarts), for `wall_time_s`;
    default: since this writer was made."""

    def __init__(self, path: Path, config: dict[str, Any], elapsed: Callable[[], float] | None = None):
        self.path = path
        self.start = time.perf_counter()
        self.elapsed = elapsed or (lambda: time.perf_counter() - self.start)
        self.data: dict[str, Any] = {"status": "running", "metrics": {}, "config": config}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def fail(self, error: str, status: str = "failed", traceback: str | None = None) -> None:
        self.data.update(status=status, error=error)
        if traceback:
            self.data["traceback"] = traceback

    def write(self) -> None:
        if not is_rank_zero():  # one results.json per run, from the first process of a DDP run
            return
        self.data["wall_time_s"] = self.elapsed()
        write_json(self.path, self.data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers (sweep summaries, a resumed run) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")  # unique: processes never write into one another's file
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save atomically (a kill never leaves a truncated weights file)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # DDP ranks may write side by side
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_state(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True (tensors and plain containers only, never pickled code), onto the CPU.
    A file holding anything else is refused with a UserError naming it."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        why = next((ln.strip() for ln in str(e).splitlines() if "unsupported" in ln.lower()), str(e).splitlines()[0])
        raise UserError(
            f"refusing to load {path}: it holds pickled Python objects, not only tensors "
            f"(checkpoints load with weights_only=True): {why}"
        ) from None


def read_completed_run(run_dir: Path) -> dict[str, Any]:
    """results.json of a run that completed with a tested checkpoint, or a UserError naming the problem."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a prunelab run folder (no results.json)")
    res = json.loads(path.read_text())
    ckpt = res.get("best_checkpoint")
    if res.get("status") != "completed" or not ckpt or not Path(ckpt).is_file():
        raise UserError(f"{run_dir}: the run did not complete with a checkpoint (status {res.get('status')})")
    return res
