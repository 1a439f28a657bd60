"""Score-vs-sparsity curves (BLEU and TER for translation, the chosen metric for classification): CSV + PNG
in the run folder, and a W&B table + line plot.

Observers only: they read the per-level figures the round driver produced and never change them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from prunelab.loggers import wandb_run

SCORE_NAMES = {"bleu": "BLEU", "acc": "accuracy", "f1": "F1", "mcc": "MCC"}


def _metric_keys(results: dict[str, Any]) -> set[str]:
    keys = set(results.get("metrics") or {})
    for lv in results.get("levels") or []:
        keys |= set(lv.get("metrics") or {})
    return keys


def has_score(results: dict[str, Any]) -> bool:
    """Whether `score_of` reads this file's own score (a `score` entry, or metrics to infer it from)
    rather than guessing: a job that failed before any evaluation has neither."""
    return bool(results.get("score")) or bool(_metric_keys(results))


def score_of(results: dict[str, Any]) -> tuple[str, str]:
    """(key, name) of the task's score of a results.json (or of one of its `levels`): e.g. ("bleu", "BLEU")
    or ("acc", "accuracy"); metrics are `val/<key>` and `test/<key>`. Files written before results carried
    `score` are inferred from their metrics: BLEU if any metric ends in "/bleu", else accuracy."""
    score = results.get("score")
    if isinstance(score, dict) and score.get("key"):
        key = str(score["key"])
        return key, str(score.get("name") or SCORE_NAMES.get(key, key))
    if any(k.endswith("/bleu") for k in _metric_keys(results)):
        return "bleu", SCORE_NAMES["bleu"]
    return "acc", SCORE_NAMES["acc"]


def curve_columns(levels: list[dict[str, Any]], key: str | None = None) -> list[str]:
    """round, sparsity, then val/<score> and test/<score>, each followed by its TER when the levels have one
    (translation: round, sparsity, val/bleu, val/ter, test/bleu, test/ter)."""
    key = key or score_of(levels[-1] if levels else {})[0]
    present = {k for lv in levels for k in lv.get("metrics") or {}}
    columns = ["round", "sparsity"]
    for split in ("val", "test"):
        columns.append(f"{split}/{key}")
        if f"{split}/ter" in present:
            columns.append(f"{split}/ter")
    return columns


def level_rows(levels: list[dict[str, Any]], columns: list[str] | None = None) -> list[list[float]]:
    columns = columns or curve_columns(levels)
    return [
        [lvl["round"], lvl["sparsity"], *(lvl["metrics"].get(c, float("nan")) for c in columns[2:])] for lvl in levels
    ]


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure atomically (readers never see half a PNG) and free it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def plot_curves(
    path: Path, series: dict[str, list[tuple[float, float, float | None]]], title: str, score_name: str = "BLEU"
) -> None:
    """series: name -> [(sparsity, score, TER or None)]; one line per name, the score ("test <score_name>")
    left and, when any point has a TER, TER right."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    with_ter = any(p[2] is not None for pts in series.values() for p in pts)
    fig, axes = plt.subplots(1, 2 if with_ter else 1, figsize=(10 if with_ter else 5.5, 4), squeeze=False)
    ax_s = axes[0][0]
    for name, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0])
        xs = [100 * p[0] for p in pts]
        ax_s.plot(xs, [p[1] for p in pts], marker="o", label=name)
        if with_ter:
            axes[0][1].plot(xs, [math.nan if p[2] is None else p[2] for p in pts], marker="o", label=name)
    labels = [f"test {score_name}"] + (["test TER"] if with_ter else [])
    for ax, label in zip(axes[0], labels, strict=True):
        ax.set_xlabel("sparsity (% of prunable weights)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_s.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def record_levels(out: Path, levels: list[dict[str, Any]], logger: Any, name: str) -> None:
    """Write curve.csv and curve.png for one run's levels, and send the table and plot to W&B."""
    key, score_name = score_of(levels[-1])
    columns = curve_columns(levels, key)
    rows = level_rows(levels, columns)
    write_csv(out / "curve.csv", columns, rows)
    i_score = columns.index(f"test/{key}")
    i_ter = columns.index("test/ter") if "test/ter" in columns else None
    points = [(r[1], r[i_score], None if i_ter is None else r[i_ter]) for r in rows]
    what = f"{score_name}/TER" if i_ter is not None else score_name
    plot_curves(out / "curve.png", {name: points}, f"{name}: test {what} per level", score_name)
    run = wandb_run(logger)
    if run is not None:
        import wandb

        table = wandb.Table(columns=[c.replace("/", "_") for c in columns], data=rows)
        logged = {
            "levels/table": table,
            f"levels/{key}_vs_sparsity": wandb.plot.line(
                table, "sparsity", f"test_{key}", title=f"test {score_name} vs sparsity"
            ),
        }
        if i_ter is not None:
            logged["levels/ter_vs_sparsity"] = wandb.plot.line(
                table, "sparsity", "test_ter", title="test TER vs sparsity"
            )
        run.log(logged)
