"""`prunelab compare`: one row per run from its results.json, matched sparsities together, what each number is."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from prunelab.cli.main import main
from prunelab.compare import compare, row


def write(folder: Path, method: str | None, pattern: str, sparsity: float, dense: float, final: float, steps: int):
    levels = [
        {"round": 0, "stage": "dense", "sparsity": 0.0, "metrics": {"test/bleu": dense}, "time": {"steps": 0}},
        {"round": 1, "stage": "oneshot", "sparsity": sparsity, "metrics": {"test/bleu": final}}
        | {"time": {"steps": steps}},
    ]
    res = {
        "status": "completed",
        "score": {"key": "bleu", "name": "BLEU"},
        "levels": levels,
        "wall_time_s": 12.5,
        "choices": {"pruner": "oneshot" if method else "mp"},
        "config": {"pruner": {"pattern": pattern}},
    }
    if method:
        res["oneshot"] = {
            "method": method,
            "pattern": pattern,
            "update": method == "sparsegpt",
            "sparsity_of": "prunable matrices (Linear weights)",
            "calibration": {"examples": 128, "tokens": 4000},
            "seconds": 3.0,
            "memory": {"peak_over_model": 1.2},
        }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def test_rows_sort_by_sparsity_and_say_what_each_number_is(tmp_path: Path) -> None:
    runs = [
        write(tmp_path / "w60", "wanda", "unstructured", 0.6, 30.0, 25.5, 0),
        write(tmp_path / "s50", "sparsegpt", "unstructured", 0.5, 30.0, 29.25, 0),
        write(tmp_path / "m24", None, "2:4", 0.5, 30.0, 27.0, 1000),
    ]
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "results.json").write_text(json.dumps({"status": "running", "levels": []}))
    text = compare([*runs, tmp_path / "partial"], tmp_path / "out")
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [line.split(" | ")[0].strip("| ") for line in lines] == ["m24", "s50", "w60", "partial"]
    s50 = row(tmp_path / "s50")
    assert (s50["method"], s50["dense"], s50["final"], s50["change"]) == ("sparsegpt", 30.0, 29.25, -0.75)
    assert row(tmp_path / "m24")["method"] == "gradual magnitude" and row(tmp_path / "m24")["recovery_steps"] == 1000
    assert "| not run yet |" in text
    csv = (tmp_path / "out" / "compare.csv").read_text().splitlines()
    assert csv[0].startswith("run,method,pattern,sparsity") and len(csv) == 5


def test_compare_cli_says_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() gives the prunelab logger a handler on this test's (captured, later closed) stderr: keep it to this test
    monkeypatch.setattr(logging.getLogger("prunelab"), "handlers", [])
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "no readable results.json" in capsys.readouterr().err
