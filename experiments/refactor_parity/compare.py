"""Compare two folders written by experiments/refactor_parity/run.sh: every run's results.json metrics, sparsity and
parameter counts, exactly (to the last digit). Exit 1 and one line per difference when any differs.

    python -m experiments.refactor_parity.compare BEFORE AFTER [--write experiments/refactor_parity/results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RUNS = ("default", "slt_mp", "cls_dense", "cls_oneshot", "structured_kd", "lm")


def fingerprint(run: Path) -> dict[str, Any]:
    """What must not change: the tested metrics, the sparsity reached, the parameter counts, and each level's."""
    res = json.loads((run / "results.json").read_text())
    if res.get("status") != "completed":
        raise SystemExit(f"{run}: status {res.get('status')!r}, not completed")
    levels = sorted(run.glob("checkpoints/round_*/results.json"))
    return {
        "metrics": res["metrics"],
        "sparsity": res.get("sparsity", {}).get("overall"),
        "params": res.get("params"),
        "levels": {p.parent.name: json.loads(p.read_text()).get("metrics") for p in levels},
    }


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in {'before' if k in a else 'after'}" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in sorted(set(a) & set(b)) for d in differences(a[k], b[k], f"{where}.{k}")]
    return [] if a == b else [f"{where}: {a!r} before, {b!r} after"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--write", type=Path, help="also write both fingerprints to this JSON file")
    args = parser.parse_args(argv)
    before = {name: fingerprint(args.before / name) for name in RUNS}
    after = {name: fingerprint(args.after / name) for name in RUNS}
    diffs = differences(before, after)
    if args.write:
        args.write.write_text(json.dumps({"before": before, "after": after, "differences": diffs}, indent=1) + "\n")
    for line in diffs:
        print(line)
    print(f"{len(RUNS)} runs compared: {'identical' if not diffs else f'{len(diffs)} differences'}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
