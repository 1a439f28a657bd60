"""`prunelab compare RUN...`: runs side by side, one row each, from their results.json files: the method (one-shot
method and pattern, or the pruner), the sparsity reached and of what, the start (dense) score and the final score,
calibration, recovery steps, wall time and the pruning's peak memory. Rows are sorted by sparsity, then pattern,
then method, so that methods at matched sparsity sit together. Written as a Markdown table (stdout, and
compare.md) and compare.csv.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelab.callbacks.curves import write_csv
from prunelab.errors import UserError

COLUMNS = [
    "run",
    "method",
    "pattern",
    "sparsity",
    "sparsity_of",
    "score",
    "dense",
    "final",
    "change",
    "calibration_examples",
    "calibration_tokens",
    "recovery_steps",
    "prune_s",
    "wall_s",
    "peak_memory_over_model",
]


def describe(res: dict[str, Any]) -> tuple[str, str]:
    """(method, pattern) of a run: one-shot method (SparseGPT without its update says so), gradual magnitude, or the
    pruner's name."""
    cfg = (res.get("config") or {}).get("pruner") or {}
    pruner = (res.get("choices") or {}).get("pruner") or str(cfg.get("_target_", "?")).rsplit(".", 1)[-1]
    if "oneshot" in res:
        o = res["oneshot"]
        method = o["method"] + (" (mask only)" if o.get("update") is False else "")
        return method, o["pattern"]
    if pruner == "mp":
        return "gradual magnitude", str(cfg.get("pattern", "unstructured"))
    return pruner, "unstructured"


def row(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir}: no readable results.json ({type(e).__name__})") from None
    levels = res.get("levels") or []
    if res.get("status") != "completed" or not levels:
        return {"run": run_dir.name, "method": "not run yet", **dict.fromkeys(COLUMNS[2:], None)}
    key = f"test/{res['score']['key']}"
    dense, final = levels[0], levels[-1]
    method, pattern = describe(res)
    o = res.get("oneshot") or {}
    cal = o.get("calibration") or {}
    d, f = dense["metrics"].get(key), final["metrics"].get(key)
    return {
        "run": run_dir.name,
        "method": method,
        "pattern": pattern,
        "sparsity": final["sparsity"],
        "sparsity_of": o.get("sparsity_of", "prunable matrices (Linear weights)"),
        "score": key,
        "dense": d if dense is not final else None,
        "final": f,
        "change": f - d if dense is not final and d is not None and f is not None else None,
        "calibration_examples": cal.get("examples"),
        "calibration_tokens": cal.get("tokens"),
        "recovery_steps": final.get("time", {}).get("steps"),
        "prune_s": o.get("seconds"),
        "wall_s": res.get("wall_time_s"),
        "peak_memory_over_model": (o.get("memory") or {}).get("peak_over_model"),
    }


def compare(run_dirs: list[Path], out: Path | None = None) -> str:
    if not run_dirs:
        raise UserError("prunelab compare: give at least one run folder")
    rows = [row(Path(d)) for d in run_dirs]
    rows.sort(key=lambda r: (r["sparsity"] is None, r["sparsity"] or 0.0, r["pattern"] or "", r["method"]))
    text = markdown(rows)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
        write_csv(out / "compare.csv", COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
    return text


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    score = next((r["score"] for r in rows if r["score"]), "score")
    head = [
        "run",
        "method",
        "pattern",
        "sparsity",
        f"dense {score}",
        f"pruned {score}",
        "change",
        "calibration (examples / tokens)",
        "recovery steps",
        "pruning (s)",
        "wall (s)",
        "peak memory / model",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cal = (
            f"{_fmt(r['calibration_examples'])} / {_fmt(r['calibration_tokens'])}"
            if r["calibration_examples"] is not None
            else "—"
        )
        cells = [
            r["run"],
            r["method"],
            _fmt(r["pattern"]),
            _fmt(r["sparsity"], 3),
            _fmt(r["dense"]),
            _fmt(r["final"]),
            _fmt(r["change"]),
            cal,
            _fmt(r["recovery_steps"]),
            _fmt(r["prune_s"], 1),
            _fmt(r["wall_s"], 0),
            _fmt(r["peak_memory_over_model"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    of = {r["sparsity_of"] for r in rows if r["sparsity_of"]}
    lines.append("")
    lines.append(f"Sparsity: the fraction of {' / '.join(sorted(of)) or 'prunable matrices'} removed.")
    return "\n".join(lines) + "\n"
