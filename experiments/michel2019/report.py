"""Michel, Levy & Neubig (2019) on a converged 6+6-layer, 8-head model: the tables and verdicts of README.md.

    python -m experiments.michel2019.report DENSE_RUN_DIR [OUT_DIR]

Reads DENSE_RUN_DIR/results.json and DENSE_RUN_DIR/heads/heads.json (written by `prunelab heads`) and writes to
OUT_DIR (default experiments/michel2019/results): tables.md (every table and the verdicts), verdicts.json, and
copies of the heads folder's figures and CSVs. Every number comes from those two files; the thresholds of the
verdicts are stated next to them, and a difference within a threshold is a tie (experiments.reporting.tie_rule).
A dense run not finished, or without heads.json yet, gives "not run yet" tables and verdicts. Every arm compared
is the same trained model with heads masked: no verdict compares unequal training.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean
from typing import Any

from experiments.reporting import NOISE, NOT_RUN, by_gap, extreme_verdict, run_state, table, tie_rule, write_results
from prunelab.models.addressing import component_type

TYPES = {"E:SA": "enc self-attention", "D:SA": "dec self-attention", "D:EA": "enc-dec attention"}
SMALL = 0.5  # BLEU: a single-head ablation whose |change| is below this counts as "small cost"
FRACTIONS = (0.2, 0.4, 0.5, 0.6, 0.8)
BLEU_NOISE = NOISE["bleu"]  # BLEU: differences within this between two scores are ties
SPEED_NOISE = NOISE["speedup"]  # percentage points of throughput: one timing each
CLAIMS = (
    "most single heads can be removed at a small cost",
    "enc-dec attention is the most sensitive to pruning",
    "pruning by I_h beats pruning in random order",
    "pruning half the heads speeds up inference, more at large batch sizes",
)


def at(curve: list[dict[str, float]], fraction: float) -> float:
    """The curve's score at the first point pruning at least `fraction` of its heads."""
    return next(p["bleu"] for p in curve if p["fraction"] >= fraction - 1e-9)


def report(run_dir: Path, out: Path) -> dict[str, Any]:
    state = run_state(run_dir)
    if state is None and not (run_dir / "heads" / "heads.json").is_file():
        state = f"{NOT_RUN} (no heads/heads.json: run `prunelab heads {run_dir}`)"
    if state is not None:
        verdicts = {c: {"verdict": NOT_RUN, "evidence": f"dense run: {state}"} for c in CLAIMS}
        write_results(out, [f"Dense model: `{run_dir}`: {state}."], verdicts)
        return verdicts
    res = json.loads((run_dir / "results.json").read_text())
    rep = json.loads((run_dir / "heads" / "heads.json").read_text())
    base, deltas, curves = rep["baseline_bleu"], rep["ablation_delta_bleu"], rep["pruning_curves"]
    lines = [
        f"Dense model: `{run_dir}`, test BLEU {base:.2f} (greedy; the run's beam-4 test BLEU is "
        f"{res['metrics']['test/bleu']:.2f}), trained {res['levels'][0]['time']['steps']} steps."
    ]

    # 1. single-head ablation (Table 1, for every attention type)
    layers = sorted({int(h.split(".")[1]) for h in deltas})
    n_heads = len({h.rsplit(".h", 1)[1] for h in deltas})
    lines.append("\n## Single-head ablation: BLEU change when one head is masked (Table 1)\n")
    for kind, label in TYPES.items():
        side, sub = ("enc", "sa") if kind == "E:SA" else ("dec", kind[2:].lower())
        rows = [[f"{label} layer {i + 1}", *(deltas[f"{side}.{i}.{sub}.h{j}"] for j in range(n_heads))] for i in layers]
        lines.append(table(["", *(f"h{j}" for j in range(n_heads))], rows) + "\n")
    small = {k: sum(abs(d) < SMALL for h, d in deltas.items() if component_type(h) == k) for k in TYPES}
    total = {k: sum(component_type(h) == k for h in deltas) for k in TYPES}
    share_small = sum(small.values()) / len(deltas)
    worst = min(deltas, key=deltas.get)
    lines.append(
        table(
            ["attention", "heads", f"|ΔBLEU| < {SMALL}", "mean ΔBLEU", "worst ΔBLEU"],
            [
                [
                    TYPES[k],
                    total[k],
                    small[k],
                    mean(d for h, d in deltas.items() if component_type(h) == k),
                    min(d for h, d in deltas.items() if component_type(h) == k),
                ]
                for k in TYPES
            ],
        )
    )

    # 2. keep one head per layer (Table 2)
    lines.append("\n## Keeping one head per layer (the head chosen on valid, scored on test; Table 2)\n")
    keep = rep["keep_one_head"]
    lines.append(
        table(
            ["layer", "head kept", "test BLEU", "ΔBLEU"],
            [[c, r["head"], r["test"], r["delta_test"]] for c, r in keep.items()],
        )
    )

    # 3. pruning curves (Figures 3 and 4)
    randoms = [v for k, v in curves.items() if "random order" in k]
    rows = []
    for name in ["all heads", "all heads, by ablation", *TYPES]:
        rows.append(
            [name if name not in TYPES else f"{TYPES[name]} only, by I_h", *(at(curves[name], f) for f in FRACTIONS)]
        )
    rows.append(
        [f"all heads, random order (mean of {len(randoms)})", *(mean(at(r, f) for r in randoms) for f in FRACTIONS)]
    )
    lines.append("\n## Pruning curves: test BLEU with a fraction of heads masked (Figures 3, 4)\n")
    lines.append(table(["order", *(f"{int(100 * f)}% pruned" for f in FRACTIONS)], rows))

    # 4. speed (Table 4)
    speed = (rep.get("speed") or {}).get("by_batch_size") or []
    if speed:
        frac = rep["speed"]["fraction_pruned"]
        lines.append(f"\n## Inference speed with {int(100 * frac)}% of heads cut out, by batch size (Table 4)\n")
        lines.append(
            table(
                ["batch size", "sentences", "dense sent/s", "pruned sent/s", "speed-up", "dense BLEU", "pruned BLEU"],
                [
                    [
                        r["batch_size"],
                        r["sentences"],
                        r["dense_per_s"],
                        r["pruned_per_s"],
                        f"{100 * (r['speedup'] - 1):+.1f}%",
                        r["dense_score"],
                        r["pruned_score"],
                    ]
                    for r in speed
                ],
            )
        )

    # verdicts, computed from the numbers above
    by_type_half = {k: at(curves[k], 0.5) for k in TYPES}
    most_sensitive = min(by_type_half, key=by_type_half.get)
    ih = [at(curves["all heads"], f) for f in FRACTIONS]
    rnd = [mean(at(r, f) for r in randoms) for f in FRACTIONS]
    outcomes = [tie_rule(a - b, BLEU_NOISE) for a, b in zip(ih, rnd, strict=True)]
    wins, losses = outcomes.count(1), outcomes.count(-1)
    verdicts = {
        CLAIMS[0]: {
            "verdict": "agree" if share_small > 0.5 else "disagree",
            "evidence": f"{sum(small.values())} of {len(deltas)} heads ({100 * share_small:.0f}%) change test BLEU by "
            f"less than {SMALL} when masked alone; the worst single head ({worst}) costs {deltas[worst]:.2f}",
        },
        CLAIMS[1]: {
            "verdict": extreme_verdict(by_type_half, "D:EA", BLEU_NOISE, lowest=True),
            "evidence": "test BLEU with 50% of one type's heads pruned by I_h: "
            + ", ".join(f"{TYPES[k]} {v:.2f}" for k, v in by_type_half.items())
            + f" (lowest: {TYPES[most_sensitive]}; ties within {BLEU_NOISE})",
        },
        CLAIMS[2]: {
            "verdict": "agree"
            if wins >= len(FRACTIONS) - 1
            else ("disagree" if losses >= len(FRACTIONS) - 1 else "inconclusive"),
            "evidence": f"I_h is ahead at {wins} of {len(FRACTIONS)} fractions, behind at {losses} ("
            + ", ".join(f"{int(100 * f)}%: {a:.1f} vs {b:.1f}" for f, a, b in zip(FRACTIONS, ih, rnd, strict=True))
            + f"; ties within {BLEU_NOISE})",
        },
    }
    if speed:
        top = max(speed, key=lambda r: r["batch_size"])
        verdicts[CLAIMS[3]] = {
            "verdict": by_gap(100 * (top["speedup"] - max(speed[0]["speedup"], 1.0)), SPEED_NOISE),
            "evidence": ", ".join(f"batch {r['batch_size']}: {100 * (r['speedup'] - 1):+.1f}%" for r in speed)
            + f" (ties within {SPEED_NOISE} points)",
        }
    write_results(out, lines, verdicts, figures_from=run_dir / "heads")
    return verdicts


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    run = Path(sys.argv[1])
    verdicts = report(run, Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).parent / "results")
    for claim, v in verdicts.items():
        print(f"{v['verdict']:>12}  {claim}")
