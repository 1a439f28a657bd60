"""Hydra's submitit launcher: a two-job sweep through `submitit_local`, each job its own submitit process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import train

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher",
    reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')",
)


def test_submitit_local_runs_a_two_job_sweep(tmp_path: Path, smoke: list[str]) -> None:
    sweep = train(
        tmp_path / "sweep",
        *smoke,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "pruner=none,mp",
        "sparsity=0.5",
        multirun=True,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in sweep.stdout + sweep.stderr
    jobs = {j: json.loads((sweep.dir / j / "results.json").read_text()) for j in ("0", "1")}
    assert [r["status"] for r in jobs.values()] == ["completed", "completed"]
    assert [r["choices"]["pruner"] for r in jobs.values()] == ["none", "mp"]
    assert jobs["1"]["sparsity"]["overall"] == pytest.approx(0.5, abs=0.005)
    # each job ran as a submitit job of its own (its logs under .submitit/<job id>/)
    logs = sorted((sweep.dir / ".submitit").glob("*/*_0_log.out"))
    assert len(logs) == 2 and logs[0].parent != logs[1].parent
    assert len((sweep.dir / "summary.csv").read_text().splitlines()) == 3  # header + one row per job
