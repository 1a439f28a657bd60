"""The fine-tuning comparison's table from the two results.json files run.sh keeps: test accuracy, optimizer steps,
wall time, and whether prunelab's lr schedule reached its peak. "Within noise" is judged against the binomial
standard error of a test accuracy on that many examples (sqrt(p (1 - p) / n)).

    python experiments/finetune_parity/report.py experiments/finetune_parity/results
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def main(folder: Path) -> str:
    ours = json.loads((folder / "prunelab_results.json").read_text())
    theirs = json.loads((folder / "transformers_results.json").read_text())
    if ours.get("status") != "completed":
        return "prunelab's run: not run yet\n"
    trained = [lv for lv in ours["levels"] if lv.get("stage") != "pretrained"]
    level = trained[-1]
    acc = 100 * ours["metrics"]["test/acc"]
    n = ours["data_splits"]["test"]["examples"] if ours.get("data_splits") else None
    ref = theirs["test_acc"]
    se = 100 * math.sqrt(ref / 100 * (1 - ref / 100) / n) if n else float("nan")
    gap = acc - ref
    verdict = "at least transformers' accuracy" if gap >= 0 else ("within noise" if -gap <= se else "below")
    lr = level.get("lr", {})
    rows = [
        "| fine-tuned by | test accuracy | optimizer steps | best dev at step | wall time (s) | peak lr reached |",
        "|---|---|---|---|---|---|",
        f"| prunelab (`experiment=finetune trainer.max_time={ours['config']['trainer']['max_time']} "
        f"trainer.max_steps={ours['config']['trainer']['max_steps']}`) | {acc:.2f} | {level['time']['steps']:,} | "
        f"— | {ours['wall_time_s']:.0f} | "
        f"{100 * lr.get('peak_lr_fraction_reached', float('nan')):.0f}% (warm-up {lr.get('warmup_steps')} steps) |",
        f"| transformers (`BertForSequenceClassification`, same recipe, steps fitted to the budget) | {ref:.2f} | "
        f"{theirs['steps']:,} | {theirs['best_dev']['step']} | {theirs['wall_time_s']:.0f} | 100% (warm-up "
        f"{round(0.1 * theirs['steps'])} steps) |",
    ]
    text = "\n".join(rows)
    text += (
        f"\n\nprunelab − transformers: {gap:+.2f} points; the binomial standard error of a test accuracy on {n} "
        f"examples is {se:.2f} points. Verdict: **{verdict}**.\n"
    )
    (folder / "tables.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
