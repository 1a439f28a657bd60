"""Summaries of a sweep folder, read from its jobs' results.json files (never from logs).

Every figure is the task's score (`score` in results.json, see `score_of`): BLEU (with TER) for
translation, the chosen metric (accuracy, F1 or MCC) for classification.

`summary.csv`: one row per job, with val_<score> and test_<score> columns (val_bleu, test_bleu, test_ter for
translation). `summary.md`: Brix et al.'s Table 1 layout (techniques x sparsity, each cell "BLEU / TER" for
translation, the score alone for classification, with the model's CSC memory per sparsity).
`summary.png`: the test score (and TER) vs sparsity, one line per technique. Runs at the end of every
multirun (a Hydra callback) and as `prunelab summarize SWEEP_DIR`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from prunelab.callbacks.curves import has_score, plot_curves, score_of, write_csv
from prunelab.errors import UserError
from prunelab.loggers import is_wandb_config

log = logging.getLogger("prunelab")
HEAD = ["job", "technique", "target_sparsity", "sparsity"]
TAIL = [
    "prunable_csc_bytes",
    "prunable_dense_bytes",
    "model_csc_bytes",
    "model_dense_bytes",
    "status",
    "source",
]
BLEU = ("bleu", "BLEU")


def _read(path: Path) -> dict[str, Any]:
    """A job's results.json; one that cannot be read counts as a job that did not complete."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {"status": "unreadable", "error": f"results.json unreadable ({type(e).__name__}: {e})"}
    return data if isinstance(data, dict) else {"status": "unreadable", "error": "results.json is not an object"}


def _row(
    job: str,
    source: str,
    technique: str,
    target: Any,
    sparsity: float,
    metrics: dict,
    memory: dict,
    status: str,
    score: tuple[str, str] = BLEU,
) -> dict[str, Any]:
    key = score[0]
    row = {
        "job": job,
        "source": source,
        "technique": technique,
        "target_sparsity": target,
        "sparsity": sparsity,
        "score": score,
        f"val_{key}": metrics.get(f"val/{key}"),
        f"test_{key}": metrics.get(f"test/{key}"),
        "prunable_csc_bytes": memory.get("prunable", {}).get("csc_bytes"),
        "prunable_dense_bytes": memory.get("prunable", {}).get("dense_bytes"),
        "model_csc_bytes": memory.get("model", {}).get("csc_bytes"),
        "model_dense_bytes": memory.get("model", {}).get("dense_bytes"),
        "status": status,
    }
    if key == BLEU[0] or "test/ter" in metrics:
        row["test_ter"] = metrics.get("test/ter")
    return row


def collect(sweep_dir: Path, from_levels: bool = True) -> list[dict[str, Any]]:
    """One row per job; with from_levels, also one per level of an iterative job whose rounds so far are
    exactly the plan of that technique run to that level's sparsity (`same_as_targeting`), unless a job
    of the sweep targets that sparsity itself. Such rows say so in `source`. Each row carries its job's
    `score` (key, name) and its figures as val_<key>, test_<key> (and test_ter for translation)."""
    found = []
    for path in sorted(sweep_dir.glob("**/results.json")):
        if "checkpoints" in path.parts:  # per-round files inside a job
            continue
        found.append((str(path.parent.relative_to(sweep_dir)), _read(path)))
    # a job that failed before any evaluation has no score of its own: it takes the sweep's
    known = [score_of(r) for _, r in found if has_score(r) and r.get("status") == "completed"]
    known = known or [score_of(r) for _, r in found if has_score(r)]
    default = Counter(known).most_common(1)[0][0] if known else score_of({})
    rows, extra = [], []
    for job, r in found:
        score = score_of(r) if has_score(r) else default
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
                score,
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
                        score_of(lv) if has_score(lv) else score,
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


def scores(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The scores of a sweep's rows, the most common first (one, unless a sweep mixes tasks)."""
    done = [r["score"] for r in rows if r["status"] == "completed"] or [r["score"] for r in rows]
    return [s for s, _ in Counter(done).most_common()]


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """summary.csv's columns: translation keeps job, technique, target_sparsity, sparsity, val_bleu,
    test_bleu, test_ter, the memory columns, status (then source)."""
    middle = []
    for key, _ in scores(rows):
        middle += [f"val_{key}", f"test_{key}"] + (["test_ter"] if _with_ter(rows, key) else [])
    return HEAD + list(dict.fromkeys(middle)) + TAIL


def _with_ter(rows: list[dict[str, Any]], key: str) -> bool:
    """Whether the rows scored by `key` carry TER (translation does)."""
    return any("test_ter" in r for r in rows if r["score"][0] == key)


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1f}" if key in ("bleu", "ter", "chrf") else f"{value:.3f}"


def _cell(r: dict[str, Any]) -> str:
    key = r["score"][0]
    cell = _fmt(key, r.get(f"test_{key}"))
    return f"{cell} / {_fmt('ter', r.get('test_ter'))}" if "test_ter" in r else cell


def _table(done: list[dict[str, Any]]) -> list[str]:
    # columns by the sparsity each job reached, not the one asked for (pruner=none stays dense at any target)
    level = {id(r): round(r["sparsity"], 3) for r in done}
    levels = sorted(set(level.values()))
    memory: dict[float, list[int]] = defaultdict(list)
    cells: dict[tuple[str, float], str] = {}
    for r in done:
        cells[(r["technique"], level[id(r)])] = _cell(r)
        if r["model_csc_bytes"] is not None:
            memory[level[id(r)]].append(r["model_csc_bytes"])
    techniques = sorted({r["technique"] for r in done})
    head = ["technique"] + [f"{100 * s:g}%" for s in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mem_row = ["model CSC MB"] + [f"{max(memory[s]) / 1e6:.2f}" if memory[s] else "–" for s in levels]
    lines.append("| " + " | ".join(mem_row) + " |")
    for t in techniques:
        lines.append("| " + " | ".join([t] + [cells.get((t, s), "–") for s in levels]) + " |")
    return lines


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One table per score (a sweep has one, unless it mixes tasks): "BLEU / TER" cells for translation,
    the score alone otherwise."""
    done = [r for r in rows if r["status"] == "completed" and r.get("sparsity") is not None]
    parts = []
    for key, name in scores(rows) or [BLEU]:
        mine = [r for r in done if r["score"][0] == key]
        what = f"{name} / TER" if _with_ter(rows, key) else name
        parts.append(
            f"Test {what} per technique and achieved sparsity (model memory in CSC form).\n\n"
            + "\n".join(_table(mine))
            + "\n"
        )
    failed = [r for r in rows if r["status"] != "completed"]
    note = f"\n{len(failed)} job(s) did not complete: {', '.join(r['job'] for r in failed)}\n" if failed else ""
    if any(r["source"] != "run" for r in done):
        note += (
            "\nSome cells come from a level of an iterative run whose rounds up to that level are exactly the\n"
            "plan of a run targeting it (see `source` in summary.csv).\n"
        )
    return "\n".join(parts) + note


def _points(rows: list[dict[str, Any]], key: str) -> dict[str, list[tuple[float, float, float | None]]]:
    """technique -> [(sparsity, test score, test TER or None)] of the completed rows scored by `key`."""
    series: dict[str, list[tuple[float, float, float | None]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "completed" and r["score"][0] == key and r.get(f"test_{key}") is not None:
            if r.get("sparsity") is not None:
                series[r["technique"]].append((r["sparsity"], r[f"test_{key}"], r.get("test_ter")))
    return dict(series)


def summarize(sweep_dir: Path, from_levels: bool = True) -> list[Path]:
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder not found: {sweep_dir}")
    rows = collect(sweep_dir, from_levels)
    if not rows:
        raise UserError(f"no results.json under {sweep_dir}")
    fields = columns(rows)
    write_csv(sweep_dir / "summary.csv", fields, [[r.get(f) for f in fields] for r in rows])
    (sweep_dir / "summary.md").write_text(markdown_table(rows), encoding="utf-8")
    key, name = scores(rows)[0]  # the plot shows the sweep's (main) score
    plot_curves(sweep_dir / "summary.png", _points(rows, key), f"sweep {sweep_dir.name}", name)
    return [sweep_dir / "summary.csv", sweep_dir / "summary.md", sweep_dir / "summary.png"]


def log_to_wandb(sweep_dir: Path, logger_cfg: DictConfig) -> None:
    """One extra W&B run in the sweep's group with the table and a score-vs-sparsity line per technique."""
    import wandb

    all_rows = collect(sweep_dir)
    rows = [r for r in all_rows if r["status"] == "completed"]
    if not rows:
        return
    fields = columns(rows)
    key, name = scores(rows)[0]
    series = _points(rows, key)
    techniques = sorted(series)
    run = wandb.init(
        project=logger_cfg.get("project", "prunelab"),
        group=sweep_dir.name,
        name="summary",
        job_type="summary",
        mode=logger_cfg.get("mode", "offline"),
        dir=str(sweep_dir),
    )
    table = wandb.Table(columns=fields, data=[[r.get(f) for f in fields] for r in rows])
    xs, ys = [], []
    for t in techniques:
        pts = sorted((p[0], p[1]) for p in series[t])
        xs.append([p[0] for p in pts])
        ys.append([p[1] for p in pts])
    run.log(
        {
            "sweep/table": table,
            f"sweep/{key}_vs_sparsity": wandb.plot.line_series(
                xs=xs, ys=ys, keys=techniques, title=f"test {name} vs sparsity", xname="sparsity"
            ),
        }
    )
    run.finish()


def failed_jobs(sweep_dir: Path) -> list[tuple[str, str]]:
    """(job folder, error) of every job of the sweep that did not complete."""
    failed = []
    for path in sorted(sweep_dir.glob("*/results.json")):
        r = _read(path)
        if r.get("status") != "completed":
            failed.append((path.parent.name, r.get("error") or r.get("status", "?")))
    return failed


class SweepSummaryCallback(Callback):
    """Hydra callback: summarize the sweep folder when a multirun ends. A job that failed with a clear error
    does not stop the sweep; the sweep then ends with one line naming the failed jobs and exit status 1."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # the summary is an observer: whatever goes wrong in it, failed jobs below still end the sweep with 1
        try:
            paths = summarize(sweep_dir)
            log.info("sweep summary: %s", ", ".join(str(p) for p in paths))
        except UserError as e:
            log.warning("no sweep summary: %s", e)
        except Exception as e:
            log.warning("no sweep summary: %s: %s", type(e).__name__, e, exc_info=True)
        else:
            if is_wandb_config(config.get("logger")):
                try:
                    log_to_wandb(sweep_dir, config.logger)
                except Exception as e:  # an observer never fails the sweep; the files above are written
                    log.warning("sweep summary not sent to W&B: %s", e)
        failed = failed_jobs(sweep_dir) if sweep_dir.is_dir() else []
        if failed:
            jobs = "; ".join(f"job {job}: {error}" for job, error in failed)
            print(f"error: {len(failed)} job(s) of the sweep failed ({sweep_dir}): {jobs}", file=sys.stderr)
            raise SystemExit(1)
