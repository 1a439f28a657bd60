"""Every section of `make bench` runs once, at its smallest setting (`bench/run.py --smoke`), so that a change to
the code a section drives (the task, the importers, the decoders) cannot break `make bench` unseen. The figures
are checked for being there and well formed, and where a section computes a number that is not a timing (the
logit difference of removed and masked heads, file sizes), for that number; no timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_every_bench_section_runs_at_its_smallest_setting(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["mode"] == "smoke"
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import run as bench_run
    finally:
        sys.path.remove(str(ROOT / "bench"))
    # the smoke plan has every section of the real plan, and each gave figures
    assert list(bench_run.smoke_plan(tmp_path)) == list(bench_run.plan(quick=False, paper=False)) == res["sections"]
    assert all(res["figures_by_section"][s] > 0 for s in res["sections"]), res["figures_by_section"]
    figures = res["figures"]
    assert len(figures) == sum(res["figures_by_section"].values())
    for f in figures:
        assert math.isfinite(f["value"]), f
        if f["lo"] is not None:
            assert f["lo"] <= f["value"] <= f["hi"], f
    by_name = {f["name"]: f for f in figures}
    # numbers that are not timings: removed heads compute what masked heads compute; sparse files are smaller
    assert by_name["removed vs masked heads: max |logit difference|"]["value"] < 1e-4
    sizes = [f for f in figures if f["section"] == "export"]
    assert len(sizes) == 3 and all(0 < f["value"] < 1 for f in sizes)
    assert (
        by_name["file / dense fp32: bitmask + values, fp16"]["value"]
        < by_name["file / dense fp32: bitmask + values, fp32"]["value"]
    )
    assert all(f["value"] > 0 for f in figures if f["section"] == "memory")
    md = (tmp_path / "RESULTS.md").read_text()
    assert all(f["name"] in md for f in figures)
