"""results.json: the one file sweeps, plots and notes read. Written atomically, also on failure."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class ResultsWriter:
    def __init__(self, path: Path, config: dict[str, Any]):
        self.path = path
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {"status": "running", "metrics": {}, "config": config}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    def fail(self, error: str, status: str = "failed", traceback: str | None = None) -> None:
        self.data.update(status=status, error=error)
        if traceback:
            self.data["traceback"] = traceback

    def write(self) -> None:
        self.data["wall_time_s"] = time.perf_counter() - self.start
        write_json(self.path, self.data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers (sweep summaries, a resumed run) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save atomically (a kill never leaves a truncated weights file)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # DDP ranks may write side by side
    torch.save(state, tmp)
    os.replace(tmp, path)


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
