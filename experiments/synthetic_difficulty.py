"""Check the embedded task's calibration: the dense default reaches test BLEU >= 80, and gradual magnitude
pruning to 95% costs at least 5 BLEU. Runs `train.py` twice and reads their results.json files.

    python experiments/synthetic_difficulty.py [extra overrides...]     (about 10 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, *overrides: str) -> dict:
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, "logger=csv", f"hydra.run.dir={out}"]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads((out / "results.json").read_text())


def main() -> None:
    extra = sys.argv[1:]
    root = ROOT / "outputs" / "synthetic_difficulty" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    dense = run(root / "dense", *extra)
    mp = run(root / "mp95", "pruner=mp", "sparsity=0.95", *extra)
    rows = [("dense", dense), ("mp 0.95", mp)]
    print(f"\n{'run':10s} {'sparsity':>9s} {'test/bleu':>10s} {'test/ter':>9s} {'fit s':>7s}")
    for name, r in rows:
        print(
            f"{name:10s} {r['sparsity']['overall']:9.4f} {r['metrics']['test/bleu']:10.2f} "
            f"{r['metrics']['test/ter']:9.2f} {r['train']['fit_time_s']:7.1f}"
        )
    drop = dense["metrics"]["test/bleu"] - mp["metrics"]["test/bleu"]
    summary = {
        "dense_test_bleu": dense["metrics"]["test/bleu"],
        "mp95_test_bleu": mp["metrics"]["test/bleu"],
        "bleu_cost_of_95pct": drop,
        "dense_ok": dense["metrics"]["test/bleu"] >= 80,
        "hard_ok": drop >= 5,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nMP to 95% costs {drop:.2f} BLEU; summary in {root / 'summary.json'}")
    sys.exit(0 if summary["dense_ok"] and summary["hard_ok"] else 1)


if __name__ == "__main__":
    main()
