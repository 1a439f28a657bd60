"""`make bench-compare BASE=<commit>`: the quick training and decoding ratios of the working tree against those of
another commit, so that a change that slows prunelab's step shows before it lands.

Both trees run `bench/run.py --quick` on the same sections as child processes of this one, one after the other and
alternating which goes first over `--rounds` rounds (so that neither always runs on a warmer or a busier machine);
each child imports its own tree's `prunelab` (PYTHONPATH=<tree>/src, checked). The base commit is checked out in a
temporary git worktree, removed at the end. Printed and written (`--out`, default a temporary folder): for every
ratio row both commits report, its value on each, and head / base (the ratio of ratios), median [min, max] over the
rounds. A ratio of ratios under 1 - `--tolerance` on a row whose goal is ">= 1" is flagged "slower".

    python bench/compare.py BASE [--sections hf,training,decoding] [--rounds 2] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SECTIONS = "hf,training,decoding"  # prunelab vs transformers training and generation; the step; the cache


def git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed'}")
    return proc.stdout.strip()


def run_tree(tree: Path, sections: str, mode: str, out: Path) -> dict[str, Any]:
    """`bench/run.py --<mode> --sections ...` of `tree` with its own prunelab -> its results.json."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "WANDB_SILENT": "true"}
    probe = subprocess.run(
        [sys.executable, "-c", "import prunelab; print(prunelab.__file__)"], cwd=tree, env=env, capture_output=True
    )
    where = probe.stdout.decode().strip()
    if probe.returncode != 0 or not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: its prunelab does not import from its own src/ (got {where or probe.stderr!r})")
    cmd = [sys.executable, "bench/run.py", f"--{mode}", "--sections", sections, "--out", str(out)]
    print(f"[compare] {tree}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: bench/run.py failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def ratio_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures that are ratios (unit "x"), by section and name."""
    return {f"{f['section']}: {f['name']}": f for f in results["figures"] if f.get("unit", "x") == "x"}


def compare(head: list[dict[str, Any]], base: list[dict[str, Any]], tolerance: float) -> list[dict[str, Any]]:
    """Per row both sides have in every round: the medians of each side and head / base per round."""
    rows = []
    names = set.intersection(*(set(ratio_rows(r)) for r in head + base))
    for name in sorted(names):
        h = [ratio_rows(r)[name]["value"] for r in head]
        b = [ratio_rows(r)[name]["value"] for r in base]
        rr = [x / y for x, y in zip(h, b, strict=True) if y]
        if not rr:
            continue
        goal = ratio_rows(head[0])[name].get("goal")
        lower = ratio_rows(head[0])[name].get("lower_is_better", False)
        change = statistics.median(rr)
        slower = goal is not None and (change > 1 + tolerance if lower else change < 1 - tolerance)
        rows.append(
            {
                "row": name,
                "head": statistics.median(h),
                "base": statistics.median(b),
                "head / base": change,
                "min": min(rr),
                "max": max(rr),
                "flag": "slower" if slower else "",
            }
        )
    return rows


def table(rows: list[dict[str, Any]], head: str, base: str) -> str:
    lines = [
        f"| row | head ({head}) | base ({base}) | head / base | [min, max] | |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['row']} | {r['head']:.3f} | {r['base']:.3f} | {r['head / base']:.3f} | "
        f"[{r['min']:.3f}, {r['max']:.3f}] | {r['flag']} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="the commit to compare the working tree with (a hash, tag or branch)")
    parser.add_argument("--sections", default=DEFAULT_SECTIONS, help=f"bench sections (default {DEFAULT_SECTIONS})")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternating which goes first")
    parser.add_argument("--smoke", action="store_true", help="the sections' smallest settings (checks, not figures)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="a ratio of ratios past 1 -/+ this is flagged")
    parser.add_argument("--out", type=Path, default=None, help="folder for compare.json and COMPARE.md")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    base_rev = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    head_rev = git("rev-parse", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    mode = "smoke" if args.smoke else "quick"
    with tempfile.TemporaryDirectory(prefix="bench-base-") as tmp:
        tree = Path(tmp) / "base"
        git("worktree", "add", "--detach", str(tree), base_rev)
        try:
            results: dict[str, list[dict[str, Any]]] = {"head": [], "base": []}
            for r in range(args.rounds):
                order = [("head", ROOT), ("base", tree)]
                for label, where in order if r % 2 == 0 else order[::-1]:
                    results[label].append(run_tree(where, args.sections, mode, out / f"{label}-{r}"))
        finally:
            git("worktree", "remove", "--force", str(tree))
    rows = compare(results["head"], results["base"], args.tolerance)
    if not rows:
        raise SystemExit(f"no ratio row is reported by both commits in sections {args.sections}")
    md = table(rows, head_rev[:12], base_rev[:12])
    meta = {"head": head_rev, "base": base_rev, "sections": args.sections, "mode": mode, "rounds": args.rounds}
    (out / "compare.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (out / "COMPARE.md").write_text(md + "\n")
    print(md)
    flagged = [r["row"] for r in rows if r["flag"]]
    print(
        f"written: {out / 'compare.json'}, {out / 'COMPARE.md'}; "
        + (f"slower: {flagged}" if flagged else "none slower")
    )


if __name__ == "__main__":
    main()
