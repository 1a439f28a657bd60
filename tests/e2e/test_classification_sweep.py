"""A classification sweep from the command line: one job fails, the good one is summarized by its accuracy,
and the sweep ends with exit status 1 and one line naming the failed job."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import train

CLS = ["model=classifier_tiny", "data=synthetic_classification", "experiment=smoke", "logger=csv"]


def test_classification_sweep_with_a_failed_job(tmp_path: Path) -> None:
    sweep = train(tmp_path / "sweep", *CLS, "pruner=mp", "sparsity=0.5,1.5", multirun=True)  # job 1: bad sparsity
    assert sweep.returncode == 1, sweep.stderr[-3000:]
    assert "Traceback" not in sweep.stderr and "on_multirun_end raised" not in sweep.stderr  # nothing swallowed
    bad = "sparsity must be in [0, 1), got 1.5"
    errors = [line for line in sweep.stderr.splitlines() if line.startswith("error:")]
    assert errors, sweep.stderr[-3000:]
    assert errors[-1] == f"error: 1 job(s) of the sweep failed ({sweep.dir}): job 1: {bad}", sweep.stderr[-3000:]

    good = json.loads((sweep.dir / "0" / "results.json").read_text(encoding="utf-8"))
    failed = json.loads((sweep.dir / "1" / "results.json").read_text(encoding="utf-8"))
    assert good["status"] == "completed" and failed["status"] == "failed" and failed["error"] == bad
    key = good.get("score", {}).get("key", "acc")  # the producer's score, once results.json carries it
    assert key in ("acc", "f1", "mcc")

    with (sweep.dir / "summary.csv").open(encoding="utf-8") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"0", "1"} and rows["1"]["status"] == "failed"
    assert not [c for c in rows["0"] if "bleu" in c]
    assert float(rows["0"][f"test_{key}"]) == pytest.approx(good["metrics"][f"test/{key}"], rel=1e-12)
    assert float(rows["0"]["sparsity"]) == pytest.approx(good["sparsity"]["overall"])

    md = (sweep.dir / "summary.md").read_text(encoding="utf-8")
    assert "BLEU" not in md and "1 job(s) did not complete: 1" in md
    assert f"| mp | {good['metrics'][f'test/{key}']:.3f} |" in md
    assert (sweep.dir / "summary.png").stat().st_size > 1000
