"""What the experiments' report scripts share: Markdown tables, tie-aware verdicts that say when the compared arms
trained unequal steps, the state of a run still going, and writing the results folder.
Run the scripts as modules from the repository root (`python -m experiments.michel2019.report ...`).

Every comparison of a verdict goes through `tie_rule`: a difference within the noise threshold of its score kind
is a tie ("inconclusive"), never a win. The thresholds, for single runs (NOISE; a report may set its own):
BLEU points, accuracy points (accuracy in %), speed-up in percentage points of throughput (one timing on a shared
CPU). Two arms trained equal compute when their steps differ by at most EQUAL_STEPS (2%) of the larger.
"""

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
    levels = json.loads((run_dir / "results.json").read_text()).get("levels") or []
    return sum((lv.get("time") or {}).get("steps", 0) for lv in levels)


NOISE: dict[str, float] = {"bleu": 0.3, "accuracy": 0.5, "speedup": 5.0}
EQUAL_STEPS = 0.02  # steps within 2% of each other are equal compute
NOT_RUN = "not run yet"


def tie_rule(gap: float, noise: float) -> int:
    """1 when `gap` (a − b) exceeds `noise`, −1 when it is below −noise, 0 (a tie) otherwise."""
    if noise < 0:
        raise ValueError(f"a noise threshold is >= 0, got {noise}")
    return 1 if gap > noise else (-1 if gap < -noise else 0)


def by_gap(gap: float, noise: float) -> str:
    """agree when the claimed advantage exceeds `noise`, disagree when it is reversed by more, else inconclusive."""
    return {1: "agree", -1: "disagree", 0: "inconclusive"}[tie_rule(gap, noise)]


def extreme_verdict(scores: dict[str, float], claimed: str, noise: float, lowest: bool = True) -> str:
    """On "`claimed` has the lowest score" (the highest, with lowest=False): agree when it is below every other by
    more than `noise`, disagree when another is below it by more, else inconclusive (a tie for the lowest)."""
    sign = 1 if lowest else -1
    rules = [tie_rule(sign * (v - scores[claimed]), noise) for k, v in scores.items() if k != claimed]
    if all(r == 1 for r in rules):
        return "agree"
    return "disagree" if any(r == -1 for r in rules) else "inconclusive"


def unequal_compute(steps: list[tuple[int, int]], tolerance: float = EQUAL_STEPS) -> str:
    """ "" when every pair of arms trained equal steps (within `tolerance` of the larger), else the note a verdict
    carries, e.g. "unequal compute: 6,000 vs 7,200 steps"."""
    unequal = [(a, b) for a, b in steps if abs(a - b) > tolerance * max(a, b)]
    if not unequal:
        return ""
    return "unequal compute: " + " and ".join(f"{a:,} vs {b:,}" for a, b in unequal) + " steps"


def with_compute(verdict: str, steps: list[tuple[int, int]], tolerance: float = EQUAL_STEPS) -> str:
    """The verdict, followed by "(unequal compute: A vs B steps)" when the compared arms trained unequal steps."""
    note = unequal_compute(steps, tolerance)
    return f"{verdict} ({note})" if note else verdict


def run_state(run_dir: Path, levels: int | None = None) -> str | None:
    """None when `run_dir` holds a completed run (results.json with status completed, its metrics and levels),
    else what a report shows instead: "not run yet" (no results.json, or nothing finished), or "running: N of M
    levels" (N levels finished; "running: N levels finished" when M = `levels` is not known; "failed: ..." for a
    run that failed)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return NOT_RUN
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError:
        return NOT_RUN
    done = [lv for lv in res.get("levels") or [] if lv.get("metrics")]
    status = res.get("status") or "running"
    if status == "completed" and res.get("metrics") and done:
        return None
    if not done:
        return NOT_RUN if status in ("running", "completed") else f"{status}, no level finished"
    return f"{status}: {len(done)} of {levels} levels" if levels else f"{status}: {len(done)} levels finished"


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
