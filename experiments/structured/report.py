"""Tables and verdicts of experiments/structured from the runs' results.json files and speed.json.

    python -m experiments.structured.report experiments/structured/results

writes tables.md, verdicts.json and structured.png (score against the parameters removed) into that folder.

Runs are named KIND_base (the dense start) and KIND_STRUCTURE_FRACTION_RECOVERY[_BUDGET] (KIND nmt | cls, STRUCTURE
width | depth, RECOVERY distil | finetune | scratch; BUDGET names a second recovery budget, e.g. _1000: runs are
compared within one budget). Compute is what the recovery trained: 3 x the student's forward FLOPs
per token (forward + backward), plus the teacher's forward FLOPs when distilling, times the tokens trained (an NMT
token being a source and a target token, as prunelab.models.cost counts them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RECOVERIES = ("distil", "finetune", "scratch")
PERCENT = ("acc", "f1")  # scores results.json keeps as fractions, reported in %


def load(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The runs by name, and the speed rows of every speed*.json (one per lane: speed_nmt.json, speed_cls.json)."""
    runs = {p.name.removesuffix(".results.json"): json.loads(p.read_text()) for p in folder.glob("*.results.json")}
    speed: dict[str, Any] = {}
    for path in sorted(folder.glob("speed*.json")):
        speed.update(json.loads(path.read_text()))
    return runs, speed


def compute(res: dict[str, Any]) -> float | None:
    """Training FLOPs of the run's recovery round (see the module doc)."""
    s = res.get("structured")
    if not s or not res.get("train", {}).get("tokens"):
        return None
    pairs = res["train"]["tokens"] / (2 if res["score"]["key"] == "bleu" else 1)
    student = s["flops_per_token"]["after"]
    teacher = s["flops_per_token"]["before"] if res.get("distillation") else 0
    return pairs * (3 * student + teacher)


def row(name: str, res: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    s = res.get("structured", {})
    parts = name.split("_")
    cut = len(parts) >= 4
    key = res["score"]["key"]
    scale = 100.0 if key in PERCENT else 1.0
    out = {
        "run": name,
        "structure": parts[1] if cut else "dense",
        "fraction": float(parts[2]) if cut else 0.0,
        "recovery": parts[3] if cut else "",
        "budget": parts[4] if len(parts) == 5 else "",
        "steps": res["levels"][-1]["time"]["steps"],
        "score": scale * res["metrics"][f"test/{key}"],
        "score_name": res["score"]["name"] + (" (%)" if key in PERCENT else ""),
        "params": s.get("params", {}).get("after", res["params"]["total"]),
        "stack_params_removed": s.get("stack_params_removed_fraction", 0.0),
        "params_removed": s.get("params_removed_fraction", 0.0),
        "flops_per_token": s.get("flops_per_token", {}).get("after"),
        "pruned_score": next(
            (scale * lv["metrics"][f"test/{key}"] for lv in res["levels"] if lv.get("stage") == "pruned"), None
        ),
        "train_tokens": res.get("train", {}).get("tokens"),
        "compute_flops": compute(res),
    }
    for r in speed.get(name, {}).get("rows", []):
        out[f"speedup_b{r['batch_size']}"] = r["speedup"]
    return out


def verdicts(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    by = {(r["structure"], r["fraction"], r["recovery"], r["budget"]): r for r in rows}
    dense = by.get(("dense", 0.0, "", ""))
    out: dict[str, Any] = {
        "distil_vs_dense": [],
        "distil_vs_scratch": [],
        "depth_vs_width_speed": [],
        "distillation_gain": [],
    }
    for (structure, fraction, recovery, budget), r in sorted(by.items()):
        if recovery != "distil":
            continue
        at = {"structure": structure, "fraction": fraction, "steps": r["steps"]}
        if dense:  # the bar for NMT width at 1/3: within 1 BLEU of the dense model, >= 1.3x at batch 64
            out["distil_vs_dense"].append(
                {
                    **at,
                    "dense": dense["score"],
                    "distil": r["score"],
                    "gap": dense["score"] - r["score"],
                    "speedup_b64": r.get("speedup_b64"),
                }
            )
        scratch = by.get((structure, fraction, "scratch", budget))
        plain = by.get((structure, fraction, "finetune", budget))
        if scratch:
            out["distil_vs_scratch"].append(
                {
                    **at,
                    "scratch_steps": scratch["steps"],
                    "distil": r["score"],
                    "scratch": scratch["score"],
                    "compute_ratio_scratch_over_distil": (scratch["compute_flops"] or 0) / (r["compute_flops"] or 1),
                    "prune_distil_wins": r["score"] > scratch["score"],
                }
            )
        if plain:
            out["distillation_gain"].append({**at, "gain": r["score"] - plain["score"]})
        if structure == "depth" and ("width", fraction, "distil", budget) in by:
            w = by[("width", fraction, "distil", budget)]
            out["depth_vs_width_speed"].append(
                {
                    "fraction": fraction,
                    "steps": r["steps"],
                    **{f"depth_b{b}": r.get(f"speedup_b{b}") for b in (1, 16, 64)},
                    **{f"width_b{b}": w.get(f"speedup_b{b}") for b in (1, 16, 64)},
                    "params_depth": r["params"],
                    "params_width": w["params"],
                }
            )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| run | removed (stack / all params) | params | FLOPs/token | recovery | steps | pruned | test"
        " | compute (PFLOP) | speed-up b1 / b16 / b64 |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        speed = " / ".join(f"{r[k]:.2f}x" if r.get(k) else "-" for k in ("speedup_b1", "speedup_b16", "speedup_b64"))
        pruned = f"{r['pruned_score']:.2f}" if r["pruned_score"] is not None else "-"
        comp = f"{r['compute_flops'] / 1e15:.3f}" if r["compute_flops"] else "-"
        flops = f"{r['flops_per_token'] / 1e6:.2f} M" if r["flops_per_token"] else "-"
        lines.append(
            f"| {r['run']} | {100 * r['stack_params_removed']:.1f}% / {100 * r['params_removed']:.1f}% "
            f"| {r['params'] / 1e6:.2f} M | {flops} | {r['recovery'] or '-'} | {r['steps']:,} | {pruned} "
            f"| {r['score']:.2f} | {comp} "
            f"| {speed} |"
        )
    return "\n".join(lines)


MARKERS = {"distil": "o", "finetune": "s", "scratch": "x"}
COLORS = {"width": "C0", "depth": "C1"}


def plot(by_kind: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One panel per model: test score against the fraction of the stacks' parameters removed, a line per structure
    and recovery (the main recovery budget; a second budget's runs are in the table), the dense model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_kind), figsize=(5.5 * len(by_kind), 4.2), squeeze=False)
    for ax, (kind, rows) in zip(axes[0], by_kind.items(), strict=True):
        for r in rows:
            if r["structure"] == "dense":
                ax.axhline(r["score"], color="k", ls="--", lw=1, label="dense")
        for structure, color in COLORS.items():
            for recovery, marker in MARKERS.items():
                pts = sorted(
                    (100 * r["stack_params_removed"], r["score"])
                    for r in rows
                    if r["structure"] == structure and r["recovery"] == recovery and not r["budget"]
                )
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(
                        xs,
                        ys,
                        marker=marker,
                        color=color,
                        ls="-" if recovery == "distil" else ":",
                        label=f"{structure}, {recovery}",
                    )
        ax.set_title(kind)
        ax.set_xlabel("layer stacks' parameters removed (%)")
        ax.set_ylabel(rows[0]["score_name"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(folder: Path) -> None:
    runs, speed = load(folder)
    sections, all_verdicts, by_kind = [], {}, {}
    for kind in ("nmt", "cls"):
        rows = [row(n, r, speed) for n, r in sorted(runs.items()) if n.startswith(kind + "_")]
        if not rows:
            continue
        dense_flops = [
            r["structured"]["flops_per_token"]["before"]
            for n, r in runs.items()
            if n.startswith(kind + "_") and "structured" in r
        ]
        for r in rows:  # the dense model's FLOPs per token, as its cuts measured them
            if r["structure"] == "dense" and dense_flops:
                r["flops_per_token"] = dense_flops[0]
        rows.sort(key=lambda r: (r["structure"] != "dense", r["budget"], r["structure"], r["fraction"], r["recovery"]))
        sections.append(f"## {kind}\n\n{table(rows)}\n")
        all_verdicts[kind] = verdicts(rows, kind)
        by_kind[kind] = rows
    (folder / "tables.md").write_text("\n".join(sections))
    if by_kind:
        plot(by_kind, folder / "structured.png")
    (folder / "verdicts.json").write_text(json.dumps(all_verdicts, indent=2) + "\n")
    print("\n".join(sections))
    print(json.dumps(all_verdicts, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
