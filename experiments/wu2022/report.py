"""AttendOut (Wu, Zhao & Zhang) on a 6-layer classifier: the tables and verdicts of README.md.

    python -m experiments.wu2022.report ATTENDOUT_RUN BASELINE_RUN [OUT_DIR] [--draws N] [--start RUN]

ATTENDOUT_RUN: `python train.py experiment=wu2022 pruner=attendout`; BASELINE_RUN: the same with pruner=none and
the same steps (run.sh: both fine-tune the model of START, the run they begin from, whose accuracy is reported too).
Compares on the test set: the baseline; the AttendOut-trained model before and after its chosen layers get
uniform attention; the same number of layers made uniform at random (N draws, default 10) in the AttendOut-trained
model and in the baseline; and the inference speed of the pruned model against its unpruned self by batch size.
Writes OUT_DIR (default experiments/wu2022/results): tables.md, verdicts.json, report.json. Differences within
a threshold are ties (experiments.reporting.tie_rule); a verdict between arms that trained unequal steps says so;
a run not finished yet gives "not run yet" or "running: N levels finished", and no model is loaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path
from statistics import mean
from typing import Any

from experiments.reporting import (
    NOISE,
    NOT_RUN,
    by_gap,
    run_state,
    table,
    tie_rule,
    trained_steps,
    with_compute,
    write_results,
)
from prunelab.models.surgery import make_uniform
from prunelab.scoring.scoring import AccuracyScorer
from prunelab.studies.speed import speed_by_batch_size
from prunelab.training import load_run

ACC_NOISE = NOISE["accuracy"]  # accuracy points: differences within this between single runs are ties
SPEED_NOISE = NOISE["speedup"]  # percentage points of throughput: one timing each
CLAIMS = (
    "AttendOut prunes a share of the attention layers",
    "the pruned AttendOut model is as accurate as the unpruned baseline",
    "G-Net's choice of layers beats a random choice of as many",
    "the pruned model is faster at inference",
)


def not_run(runs: dict[str, Path], out: Path) -> dict[str, Any] | None:
    """When a run is not finished: "not run yet" tables and verdicts, and their states (else None)."""
    states = {name: run_state(d) for name, d in runs.items()}
    waiting = {name: s for name, s in states.items() if s is not None}
    if not waiting:
        return None
    evidence = "; ".join(f"{name} run: {s}" for name, s in waiting.items())
    verdicts = {c: {"verdict": NOT_RUN, "evidence": evidence} for c in CLAIMS}
    lines = [
        "## Runs\n",
        table(["run", "folder", "state"], [[n, f"`{d}`", states[n] or "completed"] for n, d in runs.items()]),
    ]
    write_results(out, lines, verdicts)
    (out / "report.json").write_text(json.dumps({"runs": {n: states[n] or "completed" for n in runs}}, indent=2) + "\n")
    return verdicts


def report(
    attendout_dir: Path, baseline_dir: Path, out: Path, draws: int = 10, seed: int = 0, start_dir: Path | None = None
) -> dict[str, Any]:
    runs = {"AttendOut": attendout_dir, "baseline": baseline_dir, **({"start": start_dir} if start_dir else {})}
    waiting = not_run(runs, out)
    if waiting is not None:
        return waiting
    res = json.loads((attendout_dir / "results.json").read_text())
    chosen: list[str] = res["attendout"]["pruned_layers"]
    # D-Net after AttendOut, unpruned (a run started with ckpt= has a first level evaluating the start weights)
    trained_level = next(lv for lv in res["levels"] if lv["stage"] == "attendout")
    trained = load_run(Path(trained_level["best_checkpoint"]), data=True)
    pruned, baseline = load_run(attendout_dir).model, load_run(baseline_dir).model
    dm, scorer = trained.datamodule, AccuracyScorer()
    test = list(dm.test_dataloader())
    layers = [f"enc.{i}.sa" for i in range(len(trained.model.enc))]
    k = len(chosen)

    def uniform(model: Any, names: list[str]) -> float:
        m = copy.deepcopy(model)
        make_uniform(m, names)
        return scorer.score(m, test)

    rng = random.Random(seed)
    draws_list = [sorted(rng.sample(layers, k)) for _ in range(draws)] if 0 < k < len(layers) else []
    acc = {
        "start": scorer.score(load_run(start_dir).model, test) if start_dir else None,
        "baseline": scorer.score(baseline, test),
        "attendout_unpruned": scorer.score(trained.model, test),
        "attendout_pruned": scorer.score(pruned, test),
        "attendout_random": [uniform(trained.model, d) for d in draws_list],
        "baseline_same_layers": uniform(baseline, chosen) if k else None,
        "baseline_random": [uniform(baseline, d) for d in draws_list],
    }
    # how much redundancy there is to find: each layer made uniform alone, and n random layers for every n, in the
    # AttendOut-trained model (what a perfect G-Net could have pruned)
    alone = {name: uniform(trained.model, [name]) for name in layers}
    by_count = {
        n: [uniform(trained.model, sorted(rng.sample(layers, n))) for _ in range(draws)] for n in range(1, len(layers))
    }
    speed = speed_by_batch_size(trained.model, pruned, dm, scorer, (1, 16, 64), sentences=512) if k else []

    steps = {lv["stage"]: lv["time"].get("steps", 0) for lv in res["levels"]}
    base_steps = trained_steps(baseline_dir)
    lines = [
        f"AttendOut run `{attendout_dir}` ({steps.get('attendout')} steps, keep probabilities "
        + ", ".join(f"{p:.2f}" for p in res["attendout"]["keep_probability"])
        + f"; A-Net won {res['attendout']['rewards']['a_wins']} of "
        f"{sum(res['attendout']['rewards'].values())} cycles; reward {res['attendout'].get('reward', 'sign')}, "
        f"drop bonus {res['attendout'].get('drop_bonus', 0.0)}); baseline `{baseline_dir}` ({base_steps} steps)"
        + (f"; both start from `{start_dir}`." if start_dir else "."),
        f"\nAttention layers pruned: {k} of {len(layers)} ({', '.join(chosen) or 'none'}).\n",
        "## Test accuracy (%)\n",
        "Every model is scored here in float32; the runs' own results.json scored under their precision (bf16-mixed"
        " in experiment=wu2022), which can move an accuracy by a few tenths.\n",
    ]
    rand = acc["attendout_random"]
    brand = acc["baseline_random"]
    rows: list[list[Any]] = [["the model both start from", acc["start"]]] if start_dir else []
    rows += [
        [f"baseline (no AttendOut), {base_steps} steps", acc["baseline"]],
        [f"AttendOut-trained, {steps.get('attendout')} steps, all layers", acc["attendout_unpruned"]],
        [f"AttendOut-trained, its {k} layers uniform (pruned)", acc["attendout_pruned"]],
    ]
    if rand:
        rows.append(
            [
                f"AttendOut-trained, {k} random layers uniform (mean of {len(rand)}; min-max)",
                f"{mean(rand):.2f} ({min(rand):.2f}-{max(rand):.2f})",
            ]
        )
    if k:
        rows.append([f"baseline, AttendOut's {k} layers uniform", acc["baseline_same_layers"]])
    if brand:
        rows.append(
            [
                f"baseline, {k} random layers uniform (mean of {len(brand)}; min-max)",
                f"{mean(brand):.2f} ({min(brand):.2f}-{max(brand):.2f})",
            ]
        )
    lines.append(table(["model", "test accuracy"], rows))
    lines.append("\n## Redundancy: accuracy with layers made uniform in the AttendOut-trained model\n")
    lines.append(table(["layer made uniform alone", *layers], [["test accuracy", *alone.values()]]))
    lines.append("")
    lines.append(
        table(
            ["random layers made uniform", f"mean of {draws}", "min", "max"],
            [[n, mean(v), min(v), max(v)] for n, v in by_count.items()],
        )
    )
    if speed:
        lines.append(f"\n## Inference speed: {k} uniform layers (no Q/K) against the same model unpruned\n")
        lines.append(
            table(
                ["batch size", "examples", "unpruned ex/s", "pruned ex/s", "speed-up"],
                [
                    [
                        r["batch_size"],
                        r["sentences"],
                        r["dense_per_s"],
                        r["pruned_per_s"],
                        f"{100 * (r['speedup'] - 1):+.1f}%",
                    ]
                    for r in speed
                ],
            )
        )

    def as_accurate(a: float, b: float) -> str:
        """ "a is as accurate as b": a tie or better agrees; steps of the two arms compared."""
        verdict = "disagree" if tie_rule(a - b, ACC_NOISE) == -1 else "agree"
        return with_compute(verdict, [(steps.get("attendout") or 0, base_steps)])

    verdicts: dict[str, dict[str, str]] = {
        CLAIMS[0]: {
            "verdict": "agree" if k > 0 else "disagree",
            "evidence": f"{k} of {len(layers)} layers pruned",
        },
        CLAIMS[1]: {
            "verdict": as_accurate(acc["attendout_pruned"], acc["baseline"]) if k else "not tested: nothing pruned",
            "evidence": f"{acc['attendout_pruned']:.2f} vs {acc['baseline']:.2f} (ties within {ACC_NOISE} points), "
            f"after {steps.get('attendout')} and {base_steps} steps",
        },
    }
    if rand:  # the same trained model with other layers made uniform: equal training
        gap = acc["attendout_pruned"] - mean(rand)
        verdicts[CLAIMS[2]] = {
            "verdict": by_gap(gap, ACC_NOISE),
            "evidence": f"{acc['attendout_pruned']:.2f} vs {mean(rand):.2f} mean of {len(rand)} random draws",
        }
    if speed:
        top = max(speed, key=lambda r: r["batch_size"])
        verdicts[CLAIMS[3]] = {
            "verdict": by_gap(100 * (top["speedup"] - 1.0), SPEED_NOISE),
            "evidence": ", ".join(f"batch {r['batch_size']}: {100 * (r['speedup'] - 1):+.1f}%" for r in speed)
            + f" (ties within {SPEED_NOISE} points)",
        }
    write_results(out, lines, verdicts)
    full = {
        "accuracy": acc,
        "random_draws": draws_list,
        "uniform_alone": alone,
        "uniform_random_by_count": by_count,
        "pruned_layers": chosen,
        "speed": speed,
        "steps": steps,
        "baseline_steps": base_steps,
    }
    (out / "report.json").write_text(json.dumps(full, indent=2) + "\n")
    return verdicts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attendout_run", type=Path)
    parser.add_argument("baseline_run", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).parent / "results")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--start", type=Path, default=None, help="the run both fine-tune (its accuracy is reported)")
    args = parser.parse_args()
    for claim, v in report(args.attendout_run, args.baseline_run, args.out, args.draws, start_dir=args.start).items():
        print(f"{v['verdict']:>12}  {claim}")
