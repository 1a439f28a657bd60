"""results.json: the one file sweeps, plots and notes read. Written atomically, also on failure."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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

    from prunelab.errors import UserError

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
    from prunelab.errors import UserError

    path = run_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a prunelab run folder (no results.json)")
    res = json.loads(path.read_text())
    ckpt = res.get("best_checkpoint")
    if res.get("status") != "completed" or not ckpt or not Path(ckpt).is_file():
        raise UserError(f"{run_dir}: the run did not complete with a checkpoint (status {res.get('status')})")
    return res
