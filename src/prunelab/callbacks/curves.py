"""BLEU/TER-vs-sparsity curves: CSV + PNG in the run folder, and a W&B table + line plot.

Observers only: they read the per-level figures the round driver produced and never change them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

COLUMNS = ["round", "sparsity", "val/bleu", "val/ter", "test/bleu", "test/ter"]


def level_rows(levels: list[dict[str, Any]]) -> list[list[float]]:
    return [
        [lvl["round"], lvl["sparsity"], *(lvl["metrics"].get(c, float("nan")) for c in COLUMNS[2:])] for lvl in levels
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


def plot_curves(path: Path, series: dict[str, list[tuple[float, float, float]]], title: str) -> None:
    """series: name -> [(sparsity, bleu, ter)]; one line per name, BLEU left, TER right."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    for name, pts in series.items():
        pts = sorted(pts)
        xs = [100 * p[0] for p in pts]
        ax_b.plot(xs, [p[1] for p in pts], marker="o", label=name)
        ax_t.plot(xs, [p[2] for p in pts], marker="o", label=name)
    for ax, label in ((ax_b, "test BLEU"), (ax_t, "test TER")):
        ax.set_xlabel("sparsity (% of prunable weights)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def record_levels(out: Path, levels: list[dict[str, Any]], logger: Any, name: str) -> None:
    """Write curve.csv and curve.png for one run's levels, and send the table and plot to W&B."""
    rows = level_rows(levels)
    write_csv(out / "curve.csv", COLUMNS, rows)
    plot_curves(out / "curve.png", {name: [(r[1], r[4], r[5]) for r in rows]}, f"{name}: test BLEU/TER per level")
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and type(logger).__name__ == "WandbLogger":
        import wandb

        table = wandb.Table(columns=["round", "sparsity", "val_bleu", "val_ter", "test_bleu", "test_ter"], data=rows)
        experiment.log(
            {
                "levels/table": table,
                "levels/bleu_vs_sparsity": wandb.plot.line(
                    table, "sparsity", "test_bleu", title="test BLEU vs sparsity"
                ),
                "levels/ter_vs_sparsity": wandb.plot.line(table, "sparsity", "test_ter", title="test TER vs sparsity"),
            }
        )
