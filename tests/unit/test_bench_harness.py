"""The bench harness: interleaving, paired ratios, verdicts, and the files `make bench` writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import os  # noqa: E402

from harness import Figure, in_child, interleave, paired  # noqa: E402


def test_interleave_warms_up_then_rotates_the_order() -> None:
    calls: list[str] = []
    contenders = {n: (lambda n=n: calls.append(n) or float(len(calls))) for n in "abc"}
    out = interleave(contenders, reps=3, warmup=1)
    assert calls == list("abc" + "abc" + "bca" + "cab")
    # each contender's measurements are its own return values, warm-up excluded
    assert out == {"a": [4.0, 9.0, 11.0], "b": [5.0, 7.0, 12.0], "c": [6.0, 8.0, 10.0]}


def test_paired_ratio_is_the_median_of_per_repetition_ratios() -> None:
    f = paired("s", "r", [2.0, 9.0, 3.0], [1.0, 3.0, 2.0], goal=2.0)
    assert (f.value, f.lo, f.hi) == (2.0, 1.5, 3.0)  # ratios 2, 3, 1.5: not median(num) / median(den) = 1.5
    assert f.verdict == "met"


def test_in_child_runs_the_call_in_another_process_and_returns_its_figures_or_json() -> None:
    assert in_child("os", "getpid") != os.getpid()  # JSON from a fresh process
    f = in_child("harness", "paired", section="s", name="r", num=[2.0, 9.0, 3.0], den=[1.0, 3.0, 2.0], goal=2.0)
    assert f == paired("s", "r", [2.0, 9.0, 3.0], [1.0, 3.0, 2.0], goal=2.0)
    with pytest.raises(RuntimeError, match=r"harness\.paired failed in its process \(exit 1"):
        in_child("harness", "paired", section="s", name="r", num=[], den=[])  # no repetitions: median raises


@pytest.mark.parametrize(
    ("value", "goal", "lower", "verdict"),
    [
        (0.9, 0.95, False, "missed by 5%"),
        (0.95, 0.95, False, "met"),
        (0.75, 0.6, True, "missed by 25%"),
        (0.5, 0.6, True, "met"),
    ],
)
def test_verdicts(value: float, goal: float, lower: bool, verdict: str) -> None:
    assert Figure("s", "n", value, goal=goal, lower_is_better=lower).verdict == verdict


def test_bench_writes_json_and_markdown_for_the_chosen_sections(tmp_path: Path) -> None:
    # --smoke: the smallest setting (tests/integration/test_bench_sections.py runs every section of it)
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--sections", "decoding", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["mode"] == "smoke" and res["sections"] == ["decoding"]
    (fig,) = res["figures"]
    assert fig["name"].startswith("KV cache speed-up") and fig["lo"] <= fig["value"] <= fig["hi"]
    md = (tmp_path / "RESULTS.md").read_text()
    assert "| torch |" in md and fig["name"] in md
    assert ("no GPU figures exist yet" in md) == (res["machine"]["gpu"] == "none")


def test_unknown_section_is_one_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--sections", "nope", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown section(s) nope" in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_a_ratio_row_states_its_spread_and_calls_out_more_than_five_percent() -> None:
    tight = paired("s", "r", [1.02, 1.0, 0.99], [1.0, 1.0, 1.0])
    assert tight.spread == pytest.approx(0.02) and tight.spread_note == "±2%"
    wide = paired("s", "r", [1.0, 1.1, 0.9], [1.0, 1.0, 1.0])
    assert wide.spread == pytest.approx(0.1) and "over ±5%" in wide.spread_note
    assert Figure("s", "tok/s", 100.0, 90.0, 120.0, unit="tok/s").spread_note == ""  # not a ratio: no call-out
    assert Figure("s", "one-off", 1.0).spread is None


def test_the_expected_duration_comes_from_recorded_section_times(tmp_path: Path) -> None:
    import run as bench_run

    (tmp_path / "results.json").write_text(json.dumps({"mode": "quick", "section_seconds": {"a": 60.0, "b": 30.0}}))
    (tmp_path / "results_b.json").write_text(json.dumps({"mode": "full", "section_seconds": {"a": 600.0}}))
    (tmp_path / "results_c.json").write_text(json.dumps({"mode": "quick", "section_seconds": {"c": 90.0}}))
    said = bench_run.expected_duration("quick", ["a", "c"], tmp_path)
    assert said.startswith("quick mode, 2 section(s): expected ~2.5")
    said = bench_run.expected_duration("quick", ["a", "d"], tmp_path)
    assert "~1.0 min" in said and said.endswith("no recorded time for d")
    assert bench_run.expected_duration("paper", ["a"], tmp_path) == "paper mode: no recorded time for a"
    (tmp_path / "results_list.json").write_text("[1, 2]")  # another tool's file: read past
    assert bench_run.expected_duration("paper", ["a"], tmp_path) == "paper mode: no recorded time for a"


def test_an_older_results_file_counts_as_one_lump_of_its_sections(tmp_path: Path) -> None:
    import run as bench_run

    lump = {"mode": "full", "sections": ["a", "b"], "wall_s": 120.0}
    (tmp_path / "results.json").write_text(json.dumps(lump))
    (tmp_path / "results_c.json").write_text(json.dumps({"mode": "full", "section_seconds": {"c": 60.0}}))
    assert "expected ~3.0 min" in bench_run.expected_duration("full", ["a", "b", "c"], tmp_path)
    said = bench_run.expected_duration("full", ["a", "c"], tmp_path)  # the lump also ran b: not attributable
    assert "expected ~1.0 min" in said and said.endswith("no recorded time for a")
