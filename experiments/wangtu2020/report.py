"""Wang & Tu (2020) on a converged 6+6-layer Transformer: the tables and verdicts of README.md.

    python -m experiments.wangtu2020.report DENSE_RUN_DIR RETRAIN_RUN_DIR REWIND_RUN_DIR [OUT_DIR]

Reads DENSE_RUN_DIR/components/components.json (`prunelab components`), and the results.json of the
`pruner=components pruner.mode=retrain` and `pruner.mode=rewind` runs started from the dense one. Writes to OUT_DIR
(default experiments/wangtu2020/results): tables.md (every table and the verdicts), verdicts.json, and copies of
the components folder's figures and CSVs. Every number comes from those files; thresholds are stated with them: a
difference within one is a tie (experiments.reporting.tie_rule), and a verdict between arms that trained unequal
steps says so. A run not finished (or not started) gives "not run yet" or "running: N of 3 levels" instead.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from statistics import mean
from typing import Any

from experiments.reporting import (
    NOISE,
    NOT_RUN,
    by_gap,
    extreme_verdict,
    run_state,
    table,
    trained_steps,
    with_compute,
    write_results,
)
from prunelab.models.addressing import component_type

TYPES = {"E:SA": "enc self-attn", "E:FF": "enc FF", "D:SA": "dec self-attn", "D:EA": "enc-dec attn", "D:FF": "dec FF"}
BLEU_NOISE = NOISE["bleu"]  # BLEU: differences within this between single runs are ties
LEAST = "decoder self-attention is the least important component type"
MOST = "decoder feed-forward is the most important component type"
RETRAIN = "the pruned architecture, retrained, beats a shallower model of the same size"
REWIND = "unimportant components are not useless: rewinding them to θ_0 and fine-tuning beats continued training"
STAGES = 3  # levels of each training study: the dense model scored, then its two arms


def by_layer(scores: dict[str, float]) -> list[list[Any]]:
    """Rows = component types, columns = layers (the paper's heatmap as a table)."""
    layers = sorted({int(n.split(".")[1]) for n in scores})
    rows = []
    for kind, label in TYPES.items():
        side, sub = ("enc" if kind[0] == "E" else "dec"), kind[2:].lower()
        rows.append([label, *(scores.get(f"{side}.{i}.{sub}", "") for i in layers)])
    return rows


def versus(claimed: tuple[str, dict[str, Any]], other: tuple[str, dict[str, Any]], noise: float) -> dict[str, str]:
    """The verdict on "the first level's test BLEU beats the second's", with both numbers as evidence."""
    (a_name, a), (b_name, b) = claimed, other
    gap = a["metrics"]["test/bleu"] - b["metrics"]["test/bleu"]
    return {
        "verdict": with_compute(by_gap(gap, noise), [(a["time"]["steps"], b["time"]["steps"])]),
        "evidence": f"{a_name} {a['metrics']['test/bleu']:.2f} vs {b_name} {b['metrics']['test/bleu']:.2f} test BLEU "
        f"({gap:+.2f}), after {a['time']['steps']} and {b['time']['steps']} steps",
    }


def stages(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {lv["stage"]: lv for lv in results["levels"]}


def report(dense: Path, retrain: Path, rewind: Path, out: Path) -> dict[str, Any]:
    state = run_state(dense)
    if state is None and not (dense / "components" / "components.json").is_file():
        state = f"{NOT_RUN} (no components/components.json: run `prunelab components {dense}`)"
    if state is not None:
        verdicts = {c: {"verdict": NOT_RUN, "evidence": f"dense run: {state}"} for c in (LEAST, MOST, REWIND, RETRAIN)}
        write_results(out, [f"Dense model: `{dense}`: {state}."], verdicts)
        return verdicts
    comp = json.loads((dense / "components" / "components.json").read_text())
    # the full model's training steps are the dense run's (the studies start from it with ckpt= and train it 0)
    dense_steps = trained_steps(dense)
    contribution, alpha = comp["contribution"], comp["criticality"].get("alpha", {})
    layers = sorted({int(n.split(".")[1]) for n in contribution})
    cols = ["component", *(f"layer {i + 1}" for i in layers)]
    lines = [
        f"Dense model: `{dense}`; scores on the {comp['split']} set, {comp['score']} {comp['baseline_bleu']:.2f} "
        f"(beam {comp['decoding']['beam_size']})."
    ]
    lines += ["\n## Contribution (Eq. 1: BLEU drop when zeroed, clipped at 10% of BLEU, normalised)\n"]
    lines.append(table(cols, by_layer(contribution)))
    if alpha:
        lines += ["\n## Criticality (Eq. 2: smallest α with BLEU drop < ε when rewound towards θ_0)\n"]
        lines.append(table(cols, by_layer(alpha)))
    mean_contribution = {k: mean(v for n, v in contribution.items() if component_type(n) == k) for k in TYPES}
    mean_alpha = {k: mean(v for n, v in alpha.items() if component_type(n) == k) for k in TYPES} if alpha else {}
    lines += ["\n## Mean score per component type\n"]
    lines.append(
        table(
            ["type", "contribution", "criticality α"],
            [[TYPES[k], mean_contribution[k], mean_alpha.get(k, "")] for k in TYPES],
        )
    )
    rho = (comp.get("rank_agreement") or {}).get("spearman_contribution_criticality")
    if rho is not None:
        lines.append(
            f"\nSpearman rank correlation of contribution and criticality over the {len(contribution)} "
            f"components: {rho:.2f}"
        )

    curve = comp["group_ablation"]["by contribution"]
    lines += ["\n## Group ablation: components zeroed cumulatively from the least important (Figure 9)\n"]
    lines.append(
        table(["zeroed", "last added", "BLEU"], [[p["zeroed"], p["component"] or "", p["bleu"]] for p in curve[:13]])
    )

    least, most = min(mean_contribution, key=mean_contribution.get), max(mean_contribution, key=mean_contribution.get)
    noise = BLEU_NOISE
    # a contribution is a BLEU drop over the clip C (Eq. 1): the BLEU threshold in its units
    clip = comp.get("contribution_clip") or 0.1 * comp["baseline_bleu"]
    c_noise = noise / clip if clip > 0 else math.inf  # a model at 0 BLEU: every contribution is 0, all ties
    ties = f"ties within {c_noise:.3f} = {noise} BLEU / C {clip:.2f}"
    verdicts = {
        LEAST: {
            "verdict": extreme_verdict(mean_contribution, "D:SA", c_noise, lowest=True),
            "evidence": f"lowest mean contribution: {TYPES[least]} ({mean_contribution[least]:.2f}), "
            f"{TYPES['D:SA']} {mean_contribution['D:SA']:.2f} ({ties})",
        },
        MOST: {
            "verdict": extreme_verdict(mean_contribution, "D:FF", c_noise, lowest=False),
            "evidence": f"highest mean contribution: {TYPES[most]} ({mean_contribution[most]:.2f}), "
            f"{TYPES['D:FF']} {mean_contribution['D:FF']:.2f} ({ties})",
        },
    }
    # the two training studies, each written as soon as its run exists (run.sh runs rewind first: it is cheaper)
    rewind_state, retrain_state = run_state(rewind, STAGES), run_state(retrain, STAGES)
    if rewind_state is None:
        rw = stages(json.loads((rewind / "results.json").read_text()))
        lines += [
            "\n## Rewind (Table 4): the least important components reset to θ_0, then the whole model fine-tuned\n",
            table(
                ["model", "training steps (fine-tuning for the others)", "test BLEU"],
                [
                    [name, steps, lv["metrics"]["test/bleu"]]
                    for name, lv, steps in (
                        ("full model", rw["dense"], dense_steps),
                        ("continue training (baseline)", rw["continue"], rw["continue"]["time"]["steps"]),
                        ("rewind the unimportant ones, fine-tune", rw["rewind"], rw["rewind"]["time"]["steps"]),
                    )
                ],
            ),
        ]
        verdicts[REWIND] = versus(("rewind", rw["rewind"]), ("continue", rw["continue"]), noise)
    else:
        lines.append(f"\n## Rewind (Table 4)\n\n`{rewind}`: {rewind_state}")
        verdicts[REWIND] = {"verdict": NOT_RUN, "evidence": f"rewind run: {rewind_state}"}
    if retrain_state is None:
        results = json.loads((retrain / "results.json").read_text())
        rt, chosen = stages(results), results["components"]["chosen"]
        lines += [
            f"\n## Prune and retrain (Table 3): the {len(chosen)} least important components removed\n",
            f"Removed: {', '.join(chosen)}\n",
            table(
                ["model", "parameters", "training steps", "test BLEU"],
                [
                    [name, lv["params"]["total"], steps, lv["metrics"]["test/bleu"]]
                    for name, lv, steps in (
                        ("full model", rt["dense"], dense_steps),
                        ("pruned, retrained from θ_0", rt["retrain"], rt["retrain"]["time"]["steps"]),
                        ("shallow baseline, closest size", rt["shallow"], rt["shallow"]["time"]["steps"]),
                    )
                ],
            ),
        ]
        verdicts[RETRAIN] = versus(("retrained", rt["retrain"]), ("shallow", rt["shallow"]), noise)
    else:
        lines.append(f"\n## Prune and retrain (Table 3)\n\n`{retrain}`: {retrain_state}")
        verdicts[RETRAIN] = {"verdict": NOT_RUN, "evidence": f"retrain run: {retrain_state}"}
    write_results(out, lines, verdicts, figures_from=dense / "components")
    return verdicts


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    dirs = [Path(a) for a in sys.argv[1:4]]
    target = Path(sys.argv[4]) if len(sys.argv) == 5 else Path(__file__).parent / "results"
    for claim, v in report(*dirs, target).items():
        print(f"{v['verdict']:>12}  {claim}")
