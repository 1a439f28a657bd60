"""How unevenly the input features of each Linear are scaled, in the two start models of this folder: for every
prunable Linear, the norms ‖X_j‖₂ of its input features over the default calibration set (128 training examples,
seed 0, real tokens only; each layer seeing the unpruned layers before it), summarised as max/median and the
coefficient of variation (std/mean) across j. Wanda's score |W_ij|·‖X_j‖ differs from magnitude's only as far as
these norms differ. Writes results/feature_spread.json and prints a table.

    python -m experiments.oneshot.feature_spread outputs/oneshot experiments/oneshot/results
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from prunelab.pruning.calibration import calibration_set, prune_sequentially
from prunelab.pruning.masks import prunable_weights
from prunelab.training import load_run

STARTS = {"nmt": "base_nmt_cooled", "cls": "base_minilm"}


def spread(run_dir: Path) -> dict[str, dict[str, float]]:
    run = load_run(run_dir, data=True)
    cal = calibration_set(run.datamodule, n=128, max_tokens=None, seed=0)
    names = {n for n in prunable_weights(run.model) if n.endswith(".weight")}
    out: dict[str, dict[str, float]] = {}

    def record(name: str, linear: torch.nn.Linear, stats: object) -> None:  # measure, prune nothing
        norms = stats.col_sq_norms.sqrt()  # type: ignore[attr-defined]
        norms = norms[norms > 0]
        out[name] = {
            "max_over_median": float(norms.max() / norms.median()),
            "cv": float(norms.std() / norms.mean()),
        }

    prune_sequentially(run.model, cal.batches, names, record, full=False)
    return out


def main(runs: Path, results: Path) -> None:
    summary = {}
    for kind, start in STARTS.items():
        per = spread(runs / start)
        summary[kind] = {
            "start": start,
            "linears": len(per),
            "median_cv": statistics.median(v["cv"] for v in per.values()),
            "median_max_over_median": statistics.median(v["max_over_median"] for v in per.values()),
            "per_linear": per,
        }
        print(
            f"{kind}: {len(per)} Linears, median over Linears of CV(‖X_j‖) {summary[kind]['median_cv']:.3f}, "
            f"of max/median ‖X_j‖ {summary[kind]['median_max_over_median']:.2f}"
        )
    (results / "feature_spread.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
