"""The sweep summary reads results.json files: rows per job, and equivalent levels of iterative runs."""

from __future__ import annotations

import json
from pathlib import Path

from prunelab.cli.summary import collect, markdown_table

MEM = {"prunable": {"dense_bytes": 400, "csc_bytes": 100}, "model": {"dense_bytes": 1000, "csc_bytes": 700}}


def job(root: Path, name: str, pruner: str, target: float, sparsity: float, bleu: float, levels: list) -> None:
    (root / name).mkdir(parents=True)
    res = {
        "status": "completed",
        "choices": {"pruner": pruner},
        "config": {"sparsity": target},
        "sparsity": {"overall": sparsity},
        "metrics": {"test/bleu": bleu, "test/ter": 100 - bleu, "val/bleu": bleu},
        "memory": MEM,
        "levels": levels,
    }
    (root / name / "results.json").write_text(json.dumps(res))


def level(r: int, s: float, bleu: float, same: bool) -> dict:
    return {
        "round": r,
        "sparsity": s,
        "same_as_targeting": same,
        "memory": MEM,
        "metrics": {"test/bleu": bleu, "test/ter": 100 - bleu, "val/bleu": bleu},
    }


def test_rows_from_jobs_and_equivalent_levels(tmp_path: Path) -> None:
    job(
        tmp_path,
        "0",
        "lt",
        0.8,
        0.8,
        50.0,
        [level(0, 0.0, 70.0, True), level(1, 0.5, 65.0, True), level(2, 0.8, 50.0, True)],
    )
    job(tmp_path, "1", "mp", 0.5, 0.5, 60.0, [level(0, 0.5, 60.0, True)])
    job(tmp_path, "2", "slt_mp", 0.8, 0.8, 55.0, [level(0, 0.0, 70.0, True), level(1, 0.5, 64.0, False)])
    rows = collect(tmp_path)
    got = {(r["technique"], r["sparsity"]): (r["test_bleu"], r["source"]) for r in rows}
    assert got[("lt", 0.8)] == (50.0, "run")
    assert got[("lt", 0.5)] == (65.0, "level 1 of 0")  # the equivalent level fills the cell
    assert got[("mp", 0.5)] == (60.0, "run")
    assert ("slt_mp", 0.5) not in got  # not equivalent: not used
    assert len(collect(tmp_path, from_levels=False)) == 3
    md = markdown_table(rows)
    assert "| lt | 70.0 / 30.0 | 65.0 / 35.0 | 50.0 / 50.0 |" in md
    assert "| technique | 0% | 50% | 80% |" in md and "from a level" in md


def test_failed_jobs_are_listed_not_tabulated(tmp_path: Path) -> None:
    job(tmp_path, "0", "mp", 0.5, 0.5, 60.0, [])
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    md = markdown_table(collect(tmp_path))
    assert "1 job(s) did not complete: 1" in md and "| mp | 60.0 / 40.0 |" in md
