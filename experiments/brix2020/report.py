"""Brix, Bahar & Ney (2020) at CPU scale: the tables, figure and verdicts of README.md.

    python -m experiments.brix2020.report RUNS_DIR [OUT_DIR]

RUNS_DIR holds the runs of run.sh, one folder each (the keys of RUNS below); a run still going counts with its
finished levels, missing levels leave their cells empty and the verdicts that need them "not run yet", and the
per-run table says "not run yet" or "running: N levels finished". Every number comes from the runs' results.json
(their finished levels). A verdict between arms that trained unequal steps says so (experiments.reporting).
Writes OUT_DIR (default RUNS_DIR/report): tables.md, verdicts.json, table1.csv, bleu_vs_sparsity.png,
and runs/ with a copy of each run's results.json.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from experiments.reporting import NOT_RUN, by_gap, run_state, table, tie_rule, with_compute, write_results

NOISE = 1.0  # BLEU: single runs on a 500-sentence test set; gaps within this are ties (reporting.tie_rule)
DEFAULT_RUN_BLEU = 88.4  # `python train.py` (fp32, 1,200 steps), README "Quick start"
# folder -> row label; the iterative runs have one level per round, the others one
RUNS = {
    "lt": "LT (rewind to θ_0)",
    "slt": "SLT (rewind to θ_t, t = 5%)",
    "clt": "CLT (constant magnitudes)",
    "clt_random_signs": "CLT, random signs",
    "slt_mp": "SLT-MP",
    "mp_slt": "MP-SLT",
    "mp_1200": "MP, one round",
    "mp50_1200": "MP, one round",
    "mp80_1200": "MP, one round",
    "mp_matched": "MP, compute-matched",
    "mp50_matched": "MP, compute-matched",
    "mp80_matched": "MP, compute-matched",
    "random_matched": "random, compute-matched",
}
LEVELS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9]


def levels_of(runs_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """folder -> its finished levels (a running iterative run contributes the rounds it has finished)."""
    found = {}
    for name in RUNS:
        path = runs_dir / name / "results.json"
        if path.is_file():
            try:
                levels = json.loads(path.read_text()).get("levels") or []
            except json.JSONDecodeError:  # not written yet
                continue
            levels = [lv for lv in levels if "test/bleu" in (lv.get("metrics") or {})]
            if levels:
                found[name] = levels
    return found


def at(levels: list[dict[str, Any]], sparsity: float) -> dict[str, Any] | None:
    """The level at this sparsity (to 0.1 percentage point), if the run reached it."""
    return next((lv for lv in levels if abs(lv["sparsity"] - sparsity) < 1e-3), None)


def bleu(runs: dict[str, list[dict[str, Any]]], name: str, sparsity: float) -> float | None:
    lv = at(runs.get(name, []), sparsity)
    return None if lv is None else lv["metrics"]["test/bleu"]


def steps_to(levels: list[dict[str, Any]], sparsity: float) -> int:
    """Training steps of all rounds up to and including the one at `sparsity`."""
    total = 0
    for lv in levels:
        total += (lv.get("time") or {}).get("steps", 0)
        if abs(lv["sparsity"] - sparsity) < 1e-3:
            return total
    raise ValueError(f"no level at {sparsity}")


def table1(runs: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    """Rows per technique (the three one-round MP runs share one), cells 'BLEU / TER (steps)'."""
    rows: dict[str, list[Any]] = {}
    for name, levels in runs.items():
        row = rows.setdefault(RUNS[name], [RUNS[name], *("–" for _ in LEVELS)])
        for i, s in enumerate(LEVELS):
            lv = at(levels, s)
            if lv is not None:
                m = lv["metrics"]
                row[1 + i] = f"{m['test/bleu']:.1f} / {m['test/ter']:.1f} ({steps_to(levels, s):,})"
    order = list(dict.fromkeys(RUNS.values()))
    return sorted(rows.values(), key=lambda r: order.index(r[0]))


Versus = tuple[float | None, str, tuple[int, int]]


def claim(compared: Versus, noise: float = NOISE) -> dict[str, str]:
    """by_gap's verdict on a claimed advantage (noting unequal steps), or "not run yet" when a level it needs is
    missing."""
    gap, evidence, steps = compared
    if gap is None:
        return {"verdict": NOT_RUN, "evidence": "a run it needs has not finished"}
    return {"verdict": with_compute(by_gap(gap, noise), [steps]), "evidence": evidence}


def versus(runs: dict[str, list[dict[str, Any]]], a: str, b: str, sparsity: float) -> Versus:
    """(BLEU of a − BLEU of b at this sparsity, the evidence sentence with both numbers and step counts, the
    steps of a and of b up to that level)."""
    x, y = bleu(runs, a, sparsity), bleu(runs, b, sparsity)
    if x is None or y is None:
        return None, "", (0, 0)
    sa, sb = steps_to(runs[a], sparsity), steps_to(runs[b], sparsity)
    return x - y, f"{RUNS[a]} {x:.1f} ({sa:,} steps) vs {RUNS[b]} {y:.1f} ({sb:,} steps) at {sparsity:.0%}", (sa, sb)


def like_mp(runs: dict[str, list[dict[str, Any]]], mp50: str, mp80: str) -> dict[str, str]:
    """A tie with MP at 50% and 80% is the claim; a gap beyond NOISE either way is not."""
    pairs = [versus(runs, "slt", mp, s) for mp, s in ((mp50, 0.5), (mp80, 0.8))]
    if any(g is None for g, _, _ in pairs):
        return claim((None, "", (0, 0)))
    worst = max(abs(g) for g, _, _ in pairs if g is not None)
    tied = all(tie_rule(g, NOISE) == 0 for g, _, _ in pairs if g is not None)
    return {
        "verdict": with_compute("agree" if tied else "disagree", [st for _, _, st in pairs]),
        "evidence": "; ".join(e for _, e, _ in pairs) + f" (largest gap {worst:.1f}, ties within {NOISE})",
    }


def verdicts(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, str]]:
    out = {}
    out["LT (rewinding to θ_0) falls behind SLT at high sparsity"] = claim(versus(runs, "slt", "lt", 0.9))

    # "SLT performs similar to MP for sparsity levels of up to 85%": with the paper's MP (one round) and with MP
    # trained as many steps as SLT took to reach that sparsity
    out["SLT performs like MP up to 85% sparsity"] = like_mp(runs, "mp50_1200", "mp80_1200")
    out["(compute-matched) SLT performs like MP trained as many steps, up to 85%"] = like_mp(
        runs, "mp50_matched", "mp80_matched"
    )

    others = [n for n in runs if n != "slt_mp" and bleu(runs, n, 0.9) is not None]
    best = max(others, key=lambda n: bleu(runs, n, 0.9), default=None)
    gap, ev, steps = versus(runs, "slt_mp", best, 0.9) if best else (None, "", (0, 0))
    out["SLT-MP beats every other technique at 90% (compute-matched MP included)"] = claim(
        (gap, ev + " (the best of the others)" if ev else ev, steps)
    )

    gap, ev, steps = versus(runs, "clt", "slt", 0.9)
    out["the sign matters, not the magnitude: CLT does as well as SLT"] = (
        claim((None, "", steps))
        if gap is None
        else {
            "verdict": with_compute("disagree" if tie_rule(gap, NOISE) == -1 else "agree", [steps]),
            "evidence": f"{ev} (agree unless CLT < SLT − {NOISE})",
        }
    )
    out["with random signs CLT fails (control)"] = claim(versus(runs, "clt", "clt_random_signs", 0.9))
    out["MP does not find winning tickets: MP-SLT falls behind SLT"] = claim(versus(runs, "slt", "mp_slt", 0.9))
    out["a lottery mask beats a random mask at equal training (control)"] = claim(
        versus(runs, "slt", "random_matched", 0.9)
    )
    out["(compute-matched) SLT beats MP trained as many steps, at 90%"] = claim(versus(runs, "slt", "mp_matched", 0.9))
    return out


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    seen: set[str] = set()
    for name, levels in runs.items():
        label = RUNS[name]
        xs = [lv["sparsity"] * 100 for lv in levels]
        ys = [lv["metrics"]["test/bleu"] for lv in levels]
        style = "o" if len(levels) == 1 else "o-"
        ax.plot(xs, ys, style, label=None if label in seen else label, color=f"C{list(RUNS.values()).index(label)}")
        seen.add(label)
    ax.set_xlabel("sparsity of the prunable matrices (%)")
    ax.set_ylabel("test BLEU (beam 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(runs_dir: Path, out: Path) -> dict[str, dict[str, str]]:
    runs = levels_of(runs_dir)
    lines = ["Test BLEU / TER (beam 4) and, in brackets, the training steps of all rounds up to that level.\n"]
    rows = table1(runs)
    lines.append(table(["technique", *(f"{s:.0%}" for s in LEVELS)], rows))
    if "slt" in runs:
        dense = runs["slt"][0]
        lines.append(
            f"\nDense round (round 0 of SLT, {dense['time']['steps']:,} steps): test BLEU "
            f"{dense['metrics']['test/bleu']:.2f}; the dense default run (fp32) reached {DEFAULT_RUN_BLEU}."
        )
    walls = []
    for name in RUNS:  # every run of run.sh: its training, or what it is waiting for
        state = run_state(runs_dir / name)
        if state is None:
            r = json.loads((runs_dir / name / "results.json").read_text())
            walls.append([name, RUNS[name], len(runs[name]), f"{sum(lv['time']['steps'] for lv in runs[name]):,}",
                          f"{r['wall_time_s'] / 60:.1f}"])  # fmt: skip
        else:
            walls.append([name, RUNS[name], state, "–", "–"])
    lines += ["\n## Training per run\n", table(["run", "technique", "rounds", "steps", "wall (min)"], walls)]
    result = verdicts(runs)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table1.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["run", "technique", "round", "sparsity", "steps_so_far", "test_bleu", "test_ter", "model_csc_bytes"]
        )
        for name, levels in runs.items():
            for lv in levels:
                w.writerow([name, RUNS[name], lv["round"], f"{lv['sparsity']:.4f}", steps_to(levels, lv["sparsity"]),
                            f"{lv['metrics']['test/bleu']:.2f}", f"{lv['metrics']['test/ter']:.2f}",
                            lv["memory"]["model"]["csc_bytes"]])  # fmt: skip
    for name in runs:  # the evidence, beside the tables
        (out / "runs").mkdir(exist_ok=True)
        shutil.copy(runs_dir / name / "results.json", out / "runs" / f"{name}_results.json")
    if runs:
        plot(runs, out / "bleu_vs_sparsity.png")
    write_results(out, lines, result)
    return result


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    runs_dir = Path(sys.argv[1])
    if not runs_dir.is_dir():
        sys.exit(f"error: runs folder not found: {runs_dir}")
    report(runs_dir, Path(sys.argv[2]) if len(sys.argv) == 3 else runs_dir / "report")
    print(f"tables: {(Path(sys.argv[2]) if len(sys.argv) == 3 else runs_dir / 'report') / 'tables.md'}")
