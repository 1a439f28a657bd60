"""`make bench-compare BASE=<commit>` (bench/compare.py): the working tree's quick ratios against another commit's,
each run importing its own tree's prunelab, reported as head / base per row and flagged where a row with a goal got
worse by more than the tolerance (issue 41 item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import compare  # noqa: E402


def results(**rows: tuple[float, float | None]) -> dict:
    return {"figures": [{"section": "s", "name": n, "value": v, "unit": "x", "goal": g} for n, (v, g) in rows.items()]}


def test_ratio_of_ratios_per_row_and_the_slower_flag() -> None:
    head = [results(a=(0.90, 1.0), b=(2.0, None), c=(1.02, 1.0)), results(a=(0.94, 1.0), b=(2.2, None), c=(1.0, 1.0))]
    base = [results(a=(1.00, 1.0), b=(1.0, None), c=(1.00, 1.0)), results(a=(1.00, 1.0), b=(1.0, None), c=(1.0, 1.0))]
    rows = {r["row"]: r for r in compare.compare(head, base, tolerance=0.05)}
    assert rows["s: a"]["head / base"] == pytest.approx(0.92) and rows["s: a"]["flag"] == "slower"
    assert (rows["s: a"]["min"], rows["s: a"]["max"]) == pytest.approx((0.90, 0.94))
    assert rows["s: b"]["head / base"] == pytest.approx(2.1) and rows["s: b"]["flag"] == ""  # no goal: not judged
    assert rows["s: c"]["flag"] == ""  # within the tolerance
    # a row one side lacks is left out, not compared with nothing
    assert {r["row"] for r in compare.compare([results(x=(1.0, 1.0))], [results(y=(1.0, 1.0))], 0.05)} == set()


def test_smoke_run_against_head_reads_both_trees_and_removes_the_worktree(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "bench/compare.py",
            "HEAD",
            "--smoke",
            "--sections=decoding",
            "--rounds=1",
            f"--out={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "compare.json").read_text())
    head = json.loads((tmp_path / "head-0" / "results.json").read_text())
    base = json.loads((tmp_path / "base-0" / "results.json").read_text())
    assert head["mode"] == base["mode"] == "smoke" and out["rounds"] == 1
    [row] = [r for r in out["rows"] if r["row"].startswith("decoding: KV cache speed-up")]
    name = row["row"].split(": ", 1)[1]
    h = next(f["value"] for f in head["figures"] if f["name"] == name)
    b = next(f["value"] for f in base["figures"] if f["name"] == name)
    assert (row["head"], row["base"], row["head / base"]) == pytest.approx((h, b, h / b))
    assert (
        "bench-base-"
        not in subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    )
