"""Per-level curves name and use the task's score; the score is read from results.json (or inferred for
older files); W&B is recognised by class, not by class name."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from prunelab.callbacks import curves
from prunelab.callbacks.curves import curve_columns, plot_curves, record_levels, score_of
from prunelab.loggers import is_wandb_config, wandb_run

# --- score_of ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        ({"key": "bleu", "name": "BLEU"}, ("bleu", "BLEU")),
        ({"key": "acc", "name": "accuracy"}, ("acc", "accuracy")),
        ({"key": "mcc", "name": "MCC"}, ("mcc", "MCC")),
        ({"key": "f1"}, ("f1", "F1")),  # a name is filled in when missing
    ],
)
def test_score_is_read_from_results(score: dict, expected: tuple[str, str]) -> None:
    # the metrics would infer something else: the written score wins
    assert score_of({"score": score, "metrics": {"test/acc": 0.5, "test/bleu": 1.0}}) == expected


def test_score_of_older_files_is_inferred_from_metric_names() -> None:
    assert score_of({"metrics": {"val/bleu": 20.0, "test/bleu": 21.0, "test/ter": 60.0}}) == ("bleu", "BLEU")
    assert score_of({"metrics": {"test/acc": 0.5, "test/f1": 0.4, "test/mcc": 0.1}}) == ("acc", "accuracy")
    assert score_of({"metrics": {}, "levels": [{"metrics": {"test/bleu": 3.0}}]}) == ("bleu", "BLEU")
    assert score_of({"status": "failed", "metrics": {}}) == ("acc", "accuracy")  # nothing to go by
    level = {"round": 0, "sparsity": 0.5, "metrics": {"test/ter": 70.0, "test/bleu": 10.0}}
    assert score_of(level) == ("bleu", "BLEU")


# --- curve.csv / curve.png ---------------------------------------------------------------------------------


def cls_level(r: int, s: float, acc: float, score: bool) -> dict[str, Any]:
    lv = {
        "round": r,
        "sparsity": s,
        "metrics": {"val/acc": acc + 0.01, "test/acc": acc, "test/f1": acc - 0.1, "test/mcc": acc - 0.3},
    }
    return lv | ({"score": {"key": "acc", "name": "accuracy"}} if score else {})


def nmt_level(r: int, s: float, bleu: float) -> dict[str, Any]:
    metrics = {"val/bleu": bleu + 1, "val/ter": 99 - bleu, "test/bleu": bleu, "test/ter": 100 - bleu}
    return {"round": r, "sparsity": s, "metrics": metrics}


def test_translation_curve_columns_are_unchanged() -> None:
    expected = ["round", "sparsity", "val/bleu", "val/ter", "test/bleu", "test/ter"]
    assert curve_columns([nmt_level(0, 0.0, 30.0)]) == expected


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The y-axis labels of every figure plot_curves draws (the figure is still written)."""
    drawn: list[list[str]] = []
    save = curves.save_figure

    def keep(fig: Any, path: Path) -> None:
        drawn.append([ax.get_ylabel() for ax in fig.axes])
        save(fig, path)

    monkeypatch.setattr(curves, "save_figure", keep)
    return drawn


@pytest.mark.parametrize("with_score", [True, False])
def test_classification_levels_give_an_accuracy_curve(
    tmp_path: Path, figures: list[list[str]], with_score: bool
) -> None:
    levels = [cls_level(0, 0.0, 0.9, with_score), cls_level(1, 0.5, 0.8, with_score)]
    record_levels(tmp_path, levels, False, "slt_mp")
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert list(rows[0]) == ["round", "sparsity", "val/acc", "test/acc"]  # no BLEU, no TER
    assert [float(r["test/acc"]) for r in rows] == [lv["metrics"]["test/acc"] for lv in levels]
    assert [float(r["val/acc"]) for r in rows] == [lv["metrics"]["val/acc"] for lv in levels]
    assert [float(r["sparsity"]) for r in rows] == [0.0, 0.5]
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert figures == [["test accuracy"]]


def test_the_chosen_classification_metric_is_the_curve(tmp_path: Path) -> None:
    levels = [cls_level(0, 0.0, 0.9, False) | {"score": {"key": "mcc", "name": "MCC"}}]
    record_levels(tmp_path, levels, False, "mp")
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert list(rows[0]) == ["round", "sparsity", "val/mcc", "test/mcc"]
    assert float(rows[0]["test/mcc"]) == levels[0]["metrics"]["test/mcc"]


def test_translation_levels_keep_bleu_and_ter(tmp_path: Path, figures: list[list[str]]) -> None:
    levels = [nmt_level(0, 0.0, 30.0), nmt_level(1, 0.5, 25.0)]
    record_levels(tmp_path, levels, False, "lt")
    rows = list(csv.DictReader((tmp_path / "curve.csv").open()))
    assert [float(r["test/bleu"]) for r in rows] == [30.0, 25.0]
    assert [float(r["test/ter"]) for r in rows] == [70.0, 75.0]
    assert figures == [["test BLEU", "test TER"]]


def test_plot_curves_draws_ter_only_when_given(tmp_path: Path, figures: list[list[str]]) -> None:
    plot_curves(tmp_path / "a.png", {"mp": [(0.5, 0.7, None), (0.0, 0.8, None)]}, "t", "F1")
    plot_curves(tmp_path / "b.png", {"mp": [(0.5, 20.0, 60.0)]}, "t")
    assert figures == [["test F1"], ["test BLEU", "test TER"]]


# --- W&B by class ------------------------------------------------------------------------------------------


class RecordingRun:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def log(self, data: dict[str, Any]) -> None:
        self.logged.append(data)


class OwnWandbLogger(WandbLogger):
    """A subclass (as a user might write one): still W&B. Its run records instead of sending."""

    def __init__(self, run: RecordingRun) -> None:
        self.recording = run

    @property
    def experiment(self) -> Any:
        return self.recording


class WandbLoggerLookalike:
    """Named like Lightning's class, but not it: not W&B."""

    @property
    def experiment(self) -> Any:
        raise AssertionError("a logger that is not W&B must not be asked for its run")


def test_wandb_run_by_class() -> None:
    run = RecordingRun()
    assert wandb_run(OwnWandbLogger(run)) is run
    lookalike = type("WandbLogger", (WandbLoggerLookalike,), {})()
    assert wandb_run(lookalike) is None
    assert wandb_run(CSVLogger("unused")) is None
    assert wandb_run(False) is None and wandb_run(None) is None


def test_is_wandb_config_by_class() -> None:
    assert is_wandb_config({"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "p"})
    assert is_wandb_config({"_target_": f"{__name__}.OwnWandbLogger"})  # a subclass counts
    assert not is_wandb_config({"_target_": "lightning.pytorch.loggers.CSVLogger"})
    assert not is_wandb_config({"_target_": "no.such.module.WandbLogger"})  # the name alone is not enough
    assert not is_wandb_config({"enabled": False}) and not is_wandb_config(None)


def test_classification_levels_go_to_wandb_as_accuracy(tmp_path: Path) -> None:
    run = RecordingRun()
    levels = [cls_level(0, 0.0, 0.9, True), cls_level(1, 0.5, 0.8, True)]
    record_levels(tmp_path, levels, OwnWandbLogger(run), "slt_mp")
    (logged,) = run.logged
    assert set(logged) == {"levels/table", "levels/acc_vs_sparsity"}  # no BLEU or TER plot
    table = logged["levels/table"]
    assert table.columns == ["round", "sparsity", "val_acc", "test_acc"]
    assert [row[3] for row in table.data] == [0.9, 0.8]


def test_translation_levels_go_to_wandb_as_before(tmp_path: Path) -> None:
    run = RecordingRun()
    record_levels(tmp_path, [nmt_level(0, 0.0, 30.0)], OwnWandbLogger(run), "lt")
    (logged,) = run.logged
    assert set(logged) == {"levels/table", "levels/bleu_vs_sparsity", "levels/ter_vs_sparsity"}
    assert logged["levels/table"].columns == ["round", "sparsity", "val_bleu", "val_ter", "test_bleu", "test_ter"]


def test_a_lookalike_logger_gets_nothing(tmp_path: Path) -> None:
    lookalike = type("WandbLogger", (WandbLoggerLookalike,), {})()
    record_levels(tmp_path, [cls_level(0, 0.0, 0.9, True)], lookalike, "mp")  # its run is never asked for
    assert (tmp_path / "curve.csv").exists()
