"""What the experiments' report scripts share: Markdown tables, tie-aware verdicts, and writing the results folder.
Run the scripts as modules from the repository root (`python -m experiments.michel2019.report ...`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats with two decimals."""
    lines = [" | ".join(str(c) for c in header), " | ".join("---" for _ in header)]
    lines += [" | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in r) for r in rows]
    return "\n".join(f"| {line} |" for line in lines)


def trained_steps(run_dir: Path) -> int:
    """The training steps a run took, summed over its levels (a level that only evaluates, e.g. the weights a
    `ckpt=` run starts from, has none)."""
    levels = json.loads((run_dir / "results.json").read_text())["levels"]
    return sum(lv["time"].get("steps", 0) for lv in levels)


def by_gap(gap: float, noise: float) -> str:
    """agree when the claimed advantage exceeds `noise`, disagree when it is reversed by more, else inconclusive."""
    return "agree" if gap > noise else ("disagree" if gap < -noise else "inconclusive")


def write_results(
    out: Path, lines: list[str], verdicts: dict[str, dict[str, str]], figures_from: Path | None = None
) -> None:
    """tables.md (the tables, then the verdicts), verdicts.json, and copies of an analysis folder's figures and
    tables (PNG, CSV, JSON) into `out`."""
    lines = [*lines, "\n## Verdicts\n"]
    lines.append(
        table(["claim", "verdict", "evidence"], [[c, v["verdict"], v["evidence"]] for c, v in verdicts.items()])
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    (out / "verdicts.json").write_text(json.dumps(verdicts, indent=2) + "\n")
    if figures_from is not None:
        for f in sorted(figures_from.iterdir()):
            if f.suffix in (".png", ".csv", ".json"):
                shutil.copy(f, out / f.name)
