"""Summaries of a sweep folder, read from its jobs' results.json files (never from logs).

`summary.csv`: one row per job. `summary.md`: Brix et al.'s Table 1 layout (techniques x sparsity, each
cell "BLEU / TER", with the model's CSC memory per sparsity). `summary.png`: test BLEU (and TER) vs
sparsity, one line per technique. Runs at the end of every multirun (a Hydra callback) and as
`prunelab summarize SWEEP_DIR`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunelab.callbacks.curves import plot_curves, write_csv
from prunelab.errors import UserError

log = logging.getLogger("prunelab")
FIELDS = [
    "job",
    "technique",
    "target_sparsity",
    "sparsity",
    "val_bleu",
    "test_bleu",
    "test_ter",
    "prunable_csc_bytes",
    "prunable_dense_bytes",
    "model_csc_bytes",
    "model_dense_bytes",
    "status",
]


def _row(
    job: str, source: str, technique: str, target: Any, sparsity: float, metrics: dict, memory: dict, status: str
) -> dict[str, Any]:
    return {
        "job": job,
        "source": source,
        "technique": technique,
        "target_sparsity": target,
        "sparsity": sparsity,
        "val_bleu": metrics.get("val/bleu"),
        "test_bleu": metrics.get("test/bleu"),
        "test_ter": metrics.get("test/ter"),
        "prunable_csc_bytes": memory.get("prunable", {}).get("csc_bytes"),
        "prunable_dense_bytes": memory.get("prunable", {}).get("dense_bytes"),
        "model_csc_bytes": memory.get("model", {}).get("csc_bytes"),
        "model_dense_bytes": memory.get("model", {}).get("dense_bytes"),
        "status": status,
    }


def collect(sweep_dir: Path, from_levels: bool = True) -> list[dict[str, Any]]:
    """One row per job; with from_levels, also one per level of an iterative job whose rounds so far are
    exactly the plan of that technique run to that level's sparsity (`same_as_targeting`), unless a job
    of the sweep targets that sparsity itself. Such rows say so in `source`."""
    rows, extra = [], []
    for path in sorted(sweep_dir.glob("**/results.json")):
        if "checkpoints" in path.parts:  # per-round files inside a job
            continue
        r = json.loads(path.read_text())
        job = str(path.parent.relative_to(sweep_dir))
        technique = r.get("choices", {}).get("pruner", "?")
        rows.append(
            _row(
                job,
                "run",
                technique,
                r.get("config", {}).get("sparsity"),
                r.get("sparsity", {}).get("overall"),
                r.get("metrics", {}),
                r.get("memory", {}),
                r.get("status", "?"),
            )
        )
        levels = r.get("levels", [])
        for lv in levels[:-1] if r.get("status") == "completed" else []:
            if lv.get("same_as_targeting"):
                extra.append(
                    _row(
                        job,
                        f"level {lv['round']} of {job}",
                        technique,
                        round(lv["sparsity"], 3),
                        lv["sparsity"],
                        lv["metrics"],
                        lv["memory"],
                        "completed",
                    )
                )
    if from_levels:
        have = {(r["technique"], round(r["sparsity"], 3)) for r in rows if r["status"] == "completed"}
        for e in extra:
            key = (e["technique"], round(e["sparsity"], 3))
            if key not in have:
                have.add(key)
                rows.append(e)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    done = [r for r in rows if r["status"] == "completed"]
    # columns by the sparsity each job reached, not the one asked for (pruner=none stays dense at any target)
    level = {id(r): round(r["sparsity"], 3) for r in done}
    levels = sorted(set(level.values()))
    memory: dict[float, list[int]] = defaultdict(list)
    cells: dict[tuple[str, float], str] = {}
    for r in done:
        cells[(r["technique"], level[id(r)])] = f"{r['test_bleu']:.1f} / {r['test_ter']:.1f}"
        memory[level[id(r)]].append(r["model_csc_bytes"])
    techniques = sorted({r["technique"] for r in done})
    head = ["technique"] + [f"{100 * s:g}%" for s in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mem_row = ["model CSC MB"] + [f"{max(memory[s]) / 1e6:.2f}" for s in levels]
    lines.append("| " + " | ".join(mem_row) + " |")
    for t in techniques:
        lines.append("| " + " | ".join([t] + [cells.get((t, s), "–") for s in levels]) + " |")
    failed = [r for r in rows if r["status"] != "completed"]
    note = f"\n{len(failed)} job(s) did not complete: {', '.join(r['job'] for r in failed)}\n" if failed else ""
    if any(r["source"] != "run" for r in done):
        note += (
            "\nSome cells come from a level of an iterative run whose rounds up to that level are exactly the\n"
            "plan of a run targeting it (see `source` in summary.csv).\n"
        )
    return (
        "Test BLEU / TER per technique and achieved sparsity (model memory in CSC form).\n\n"
        + "\n".join(lines)
        + "\n"
        + note
    )


def summarize(sweep_dir: Path, from_levels: bool = True) -> list[Path]:
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder not found: {sweep_dir}")
    rows = collect(sweep_dir, from_levels)
    if not rows:
        raise UserError(f"no results.json under {sweep_dir}")
    write_csv(sweep_dir / "summary.csv", FIELDS, [[r[f] for f in FIELDS] for r in rows])
    (sweep_dir / "summary.md").write_text(markdown_table(rows), encoding="utf-8")
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "completed":
            series[r["technique"]].append((r["sparsity"], r["test_bleu"], r["test_ter"]))
    plot_curves(sweep_dir / "summary.png", dict(series), f"sweep {sweep_dir.name}")
    return [sweep_dir / "summary.csv", sweep_dir / "summary.md", sweep_dir / "summary.png"]


def log_to_wandb(sweep_dir: Path, logger_cfg: DictConfig) -> None:
    """One extra W&B run in the sweep's group with the table and a BLEU-vs-sparsity line per technique."""
    import wandb

    rows = [r for r in collect(sweep_dir) if r["status"] == "completed"]
    techniques = sorted({r["technique"] for r in rows})
    run = wandb.init(
        project=logger_cfg.get("project", "prunelab"),
        group=sweep_dir.name,
        name="summary",
        job_type="summary",
        mode=logger_cfg.get("mode", "offline"),
        dir=str(sweep_dir),
    )
    table = wandb.Table(columns=FIELDS, data=[[r[f] for f in FIELDS] for r in rows])
    xs, ys = [], []
    for t in techniques:
        pts = sorted((r["sparsity"], r["test_bleu"]) for r in rows if r["technique"] == t)
        xs.append([p[0] for p in pts])
        ys.append([p[1] for p in pts])
    run.log(
        {
            "sweep/table": table,
            "sweep/bleu_vs_sparsity": wandb.plot.line_series(
                xs=xs, ys=ys, keys=techniques, title="test BLEU vs sparsity", xname="sparsity"
            ),
        }
    )
    run.finish()


def failed_jobs(sweep_dir: Path) -> list[tuple[str, str]]:
    """(job folder, error) of every job of the sweep that did not complete."""
    failed = []
    for path in sorted(sweep_dir.glob("*/results.json")):
        r = json.loads(path.read_text())
        if r.get("status") != "completed":
            failed.append((path.parent.name, r.get("error") or r.get("status", "?")))
    return failed


class SweepSummaryCallback(Callback):
    """Hydra callback: summarize the sweep folder when a multirun ends. A job that failed with a clear error
    does not stop the sweep; the sweep then ends with one line naming the failed jobs and exit status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            paths = summarize(sweep_dir)
            log.info("sweep summary: %s", ", ".join(str(p) for p in paths))
        except UserError as e:
            log.warning("no sweep summary: %s", e)
        else:
            if str(config.logger.get("_target_", "")).endswith("WandbLogger"):
                try:
                    log_to_wandb(sweep_dir, config.logger)
                except Exception as e:  # an observer never fails the sweep; the files above are written
                    log.warning("sweep summary not sent to W&B: %s", e)
        failed = failed_jobs(sweep_dir) if sweep_dir.is_dir() else []
        if failed:
            jobs = "; ".join(f"job {job}: {error}" for job, error in failed)
            print(f"error: {len(failed)} job(s) of the sweep failed ({sweep_dir}): {jobs}", file=sys.stderr)
            raise SystemExit(1)
