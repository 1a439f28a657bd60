"""The sweep summary reads results.json files: rows per job, and equivalent levels of iterative runs; its
figures are the task's score (BLEU / TER for translation, the chosen metric for classification)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from prunelab import summary
from prunelab.summary import SweepSummaryCallback, collect, markdown_table, summarize

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


# --- classification sweeps ---------------------------------------------------------------------------------

CLS_SCORE = {"key": "acc", "name": "accuracy"}


def cls_job(root: Path, name: str, pruner: str, sparsity: float, acc: float, score: dict | None) -> dict[str, Any]:
    """A classification job's results.json as train.py writes it; `score` None: a file from before `score`."""
    metrics = {"val/acc": acc + 0.02, "val/f1": acc - 0.1, "test/acc": acc, "test/f1": acc - 0.05}
    metrics |= {"test/mcc": acc - 0.4, "test/loss": 0.7}
    res: dict[str, Any] = {
        "status": "completed",
        "choices": {"pruner": pruner},
        "config": {"sparsity": 0.5},
        "sparsity": {"overall": sparsity},
        "metrics": metrics,
        "memory": MEM,
        "levels": [{"round": 0, "sparsity": sparsity, "same_as_targeting": True, "memory": MEM, "metrics": metrics}],
    }
    if score is not None:
        res["score"] = score
        res["levels"][0]["score"] = score
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(res))
    return res


def md_cells(md: str) -> dict[str, list[str]]:
    """technique -> its cells, from the table of summary.md."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    return {r[0]: r[1:] for r in rows}


@pytest.mark.parametrize("score", [CLS_SCORE, None], ids=["with-score", "older-file"])
def test_classification_sweep_is_summarized_by_accuracy(tmp_path: Path, score: dict | None) -> None:
    none = cls_job(tmp_path, "0", "none", 0.0, 0.8125, score)
    mp = cls_job(tmp_path, "1", "mp", 0.5, 0.6875, score)
    paths = summarize(tmp_path)
    assert [p.name for p in paths] == ["summary.csv", "summary.md", "summary.png"]
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert not [c for c in rows[0] if "bleu" in c or "ter" in c.split("_")]  # no BLEU or TER columns
    got = {r["technique"]: r for r in rows}
    for name, res in (("none", none), ("mp", mp)):
        assert float(got[name]["test_acc"]) == res["metrics"]["test/acc"]
        assert float(got[name]["val_acc"]) == res["metrics"]["val/acc"]
    md = (tmp_path / "summary.md").read_text()
    assert "BLEU" not in md and "TER" not in md and md.startswith("Test accuracy per technique")
    cells = md_cells(md)
    assert cells["technique"] == ["0%", "50%"]
    assert cells["none"][1] == cells["mp"][0] == "–"
    assert float(cells["none"][0]) == pytest.approx(none["metrics"]["test/acc"], abs=5e-4)
    assert float(cells["mp"][1]) == pytest.approx(mp["metrics"]["test/acc"], abs=5e-4)
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_the_chosen_metric_is_the_sweep_score(tmp_path: Path) -> None:
    """task.metric=mcc: the sweep's columns and cells are MCC, not accuracy."""
    res = cls_job(tmp_path, "0", "mp", 0.5, 0.75, {"key": "mcc", "name": "MCC"})
    summarize(tmp_path)
    (row,) = csv.DictReader((tmp_path / "summary.csv").open())
    assert "test_acc" not in row and float(row["test_mcc"]) == res["metrics"]["test/mcc"]
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("Test MCC per technique")
    assert float(md_cells(md)["mp"][0]) == pytest.approx(res["metrics"]["test/mcc"], abs=5e-4)


def test_translation_columns_are_unchanged(tmp_path: Path) -> None:
    job(tmp_path, "0", "mp", 0.5, 0.5, 60.0, [])
    (tmp_path / "1").mkdir()  # failed before any evaluation: no score of its own, it takes the sweep's
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "failed", "error": "boom", "metrics": {}}))
    summarize(tmp_path)
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["job", "technique", "target_sparsity", "sparsity", "val_bleu", "test_bleu", "test_ter"]
    assert not [c for c in header if "acc" in c]
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("Test BLEU / TER per technique") and "| mp | 60.0 / 40.0 |" in md


def test_classification_sweep_with_a_failed_job(tmp_path: Path) -> None:
    good = cls_job(tmp_path, "0", "mp", 0.5, 0.625, None)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(
        json.dumps({"status": "failed", "error": "sparsity must be in [0, 1), got 1.5", "metrics": {}})
    )
    summarize(tmp_path)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["completed", "failed"] and "test_bleu" not in rows[0]
    assert float(rows[0]["test_acc"]) == good["metrics"]["test/acc"]
    md = (tmp_path / "summary.md").read_text()
    assert "1 job(s) did not complete: 1" in md and md_cells(md)["mp"] == ["0.625"]


def sweep_config(sweep: Path, logger: str = "lightning.pytorch.loggers.CSVLogger") -> Any:
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "logger": {"_target_": logger}})


def test_the_sweep_ends_with_1_naming_the_failed_job(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("prunelab"), "handlers", [])  # stderr holds only the error line
    cls_job(tmp_path, "0", "mp", 0.5, 0.625, None)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "failed", "error": "boom", "metrics": {}}))
    with pytest.raises(SystemExit) as e:
        SweepSummaryCallback().on_multirun_end(sweep_config(tmp_path))
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: 1 job(s) of the sweep failed ({tmp_path}): job 1: boom"
    assert (tmp_path / "summary.md").exists() and (tmp_path / "summary.png").exists()


def test_a_failing_summary_never_hides_a_failed_job(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls_job(tmp_path, "0", "mp", 0.5, 0.625, None)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text("{ half a fi")  # unreadable: did not complete

    def broken(sweep_dir: Path, from_levels: bool = True) -> list[Path]:
        raise TypeError("a bug in the summary")

    monkeypatch.setattr(summary, "summarize", broken)
    with pytest.raises(SystemExit) as e:
        SweepSummaryCallback().on_multirun_end(sweep_config(tmp_path))
    assert e.value.code == 1
    assert "job 1: results.json unreadable" in capsys.readouterr().err


def test_a_sweep_that_completed_ends_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls_job(tmp_path, "0", "mp", 0.5, 0.625, None)
    sent = []
    monkeypatch.setattr(summary, "log_to_wandb", lambda d, cfg: sent.append(d))
    SweepSummaryCallback().on_multirun_end(sweep_config(tmp_path))  # no SystemExit
    assert sent == [] and (tmp_path / "summary.md").exists()
    SweepSummaryCallback().on_multirun_end(sweep_config(tmp_path, "lightning.pytorch.loggers.WandbLogger"))
    assert sent == [tmp_path]
