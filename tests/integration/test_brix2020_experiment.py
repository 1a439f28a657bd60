"""experiments/brix2020: every job of run.sh composes, the compute-matched budget equals the iterative runs'
total, and the report turns runs' levels into the table, step counts and verdicts it states."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from hydra.utils import instantiate

from prunelab.cli.train import CONF_DIR
from tests.e2e.conftest import load_experiment_report
from tests.integration.conftest import run_cfg

RUN_SH = Path(CONF_DIR).parent / "experiments" / "brix2020" / "run.sh"


def jobs() -> dict[str, list[str]]:
    """run.sh's `run NAME OVERRIDES...` lines, with its shell variables substituted."""
    text = RUN_SH.read_text()
    variables = dict(re.findall(r"^(MATCHED\w*)=(\d+)", text, re.M))
    assert "MATCHED" in variables, "run.sh sets MATCHED"
    out = {}
    for line in text.splitlines():
        if line.startswith("run "):
            line = re.sub(r"\$(MATCHED\w*)", lambda m: variables[m.group(1)], line)
            name, *args = shlex.split(line)[1:]
            out[name] = args
    return out


def test_every_job_composes_and_matched_runs_train_as_long_as_the_iterative_ones() -> None:
    found = jobs()
    assert set(found) == set(load_experiment_report("brix2020").RUNS)  # the report reads every job, and only those
    steps = {}
    for name, args in found.items():
        cfg = run_cfg(["experiment=brix2020", "logger=csv", *args])
        pruner = instantiate(cfg.pruner)
        steps[name] = getattr(pruner, "rounds", 1) * cfg.trainer.max_steps
        assert cfg.task.schedule == "linear" and cfg.trainer.precision == "bf16-mixed"
        assert cfg.task.val_beam_size == 1 and cfg.task.beam_size == 4
    assert steps["slt"] == steps["lt"] == steps["clt"] == steps["clt_random_signs"] == 11 * 1200
    assert steps["mp_matched"] == steps["random_matched"] == steps["slt"]  # compute-matched
    for target in (0.5, 0.8):  # SLT's rounds up to that sparsity, from its own plan
        slt = instantiate(run_cfg(["experiment=brix2020", "pruner=slt", f"sparsity={target}"]).pruner)
        assert steps[f"mp{int(target * 100)}_matched"] == slt.rounds * 1200
    assert steps["mp_1200"] == steps["mp50_1200"] == 1200 and steps["slt_mp"] < steps["slt"]


def level(r: int, sparsity: float, bleu: float, steps: int = 100) -> dict:
    return {
        "round": r,
        "sparsity": sparsity,
        "metrics": {"test/bleu": bleu, "test/ter": 100 - bleu},
        "memory": {"model": {"csc_bytes": 1000 - r}},
        "time": {"steps": steps},
    }


def write_run(root: Path, name: str, levels: list[dict], status: str = "completed") -> None:
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps({"status": status, "levels": levels, "wall_time_s": 60.0}))


FULL = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9]  # the paper's levels to 90%


def iterative(bleu_at_90: float, schedule: list[float] = FULL) -> list[dict]:
    """Rounds of 100 steps at 80 BLEU, the last (90%) at bleu_at_90."""
    return [level(r, s, 80.0 if s < 0.9 else bleu_at_90) for r, s in enumerate(schedule)]


def test_report_tables_steps_and_verdicts(tmp_path: Path) -> None:
    report = load_experiment_report("brix2020")
    runs = tmp_path / "runs"
    write_run(runs, "slt", iterative(80.0))
    write_run(runs, "lt", iterative(70.0))  # 10 below SLT: agree
    write_run(runs, "clt", iterative(79.5))  # within 1 of SLT: agree ("as well")
    write_run(runs, "clt_random_signs", iterative(79.8))  # 0.3 below CLT: inconclusive
    write_run(runs, "mp_matched", [level(0, 0.9, 85.0, steps=1100)])  # 5 above SLT: disagree
    write_run(runs, "mp50_1200", [level(0, 0.5, 80.4)])  # SLT's 50% is 80.0: tie
    write_run(runs, "mp80_1200", [level(0, 0.8, 83.0)])  # 3 above SLT's 80%: not "like MP"
    # a run still going counts with its finished levels; the best other technique at 90% is MP (85.0)
    write_run(runs, "slt_mp", iterative(83.0, [0.0, 0.5, 0.6, 0.9]), status="running")
    verdicts = report.report(runs, tmp_path / "out")

    assert verdicts["LT (rewinding to θ_0) falls behind SLT at high sparsity"]["verdict"] == "agree"
    assert verdicts["the sign matters, not the magnitude: CLT does as well as SLT"]["verdict"] == "agree"
    assert verdicts["with random signs CLT fails (control)"]["verdict"] == "inconclusive"
    assert verdicts["(compute-matched) SLT beats MP trained as many steps, at 90%"]["verdict"] == "disagree"
    like_mp = verdicts["SLT performs like MP up to 85% sparsity"]  # SLT's 6 and 9 rounds against one round of MP
    assert like_mp["verdict"] == "disagree (unequal compute: 600 vs 100 and 900 vs 100 steps)"
    assert "largest gap 3.0" in like_mp["evidence"]
    best = verdicts["SLT-MP beats every other technique at 90% (compute-matched MP included)"]
    assert best["verdict"] == "disagree (unequal compute: 400 vs 1,100 steps)"
    assert "MP, compute-matched 85.0 (1,100 steps)" in best["evidence"]
    assert "SLT-MP 83.0 (400 steps)" in best["evidence"]  # 4 rounds of 100 steps
    missing = [  # their runs were not written
        "(compute-matched) SLT performs like MP trained as many steps, up to 85%",
        "MP does not find winning tickets: MP-SLT falls behind SLT",
        "a lottery mask beats a random mask at equal training (control)",
    ]
    for claim in missing:
        assert verdicts[claim]["verdict"] == "not run yet"

    text = (tmp_path / "out" / "tables.md").read_text()
    slt_row = next(line for line in text.splitlines() if line.startswith("| SLT (rewind"))
    cells = [c.strip() for c in slt_row.strip("|").split("|")]
    assert cells[1] == "80.0 / 20.0 (100)" and cells[-1] == "80.0 / 20.0 (1,100)"  # steps summed over the rounds
    mp_row = next(line for line in text.splitlines() if line.startswith("| MP, one round"))
    mp_cells = [c.strip() for c in mp_row.strip("|").split("|")]
    assert mp_cells[6] == "80.4 / 19.6 (100)" and mp_cells[9] == "83.0 / 17.0 (100)" and mp_cells[11] == "–"
    # the unfinished run is in the table; the per-run training table says it is still going
    assert "| slt_mp | SLT-MP | running: 4 levels finished | – | – |" in text and "| slt | SLT" in text
    assert "| mp_slt | MP-SLT | not run yet |" in text
    assert (tmp_path / "out" / "bleu_vs_sparsity.png").stat().st_size > 0
    assert (
        json.loads((tmp_path / "out" / "runs" / "lt_results.json").read_text())["levels"][-1]["metrics"]["test/bleu"]
        == 70.0
    )
    assert json.loads((tmp_path / "out" / "verdicts.json").read_text()) == verdicts


def test_report_says_not_run_for_every_claim_without_runs(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    verdicts = load_experiment_report("brix2020").report(tmp_path / "runs", tmp_path / "out")
    assert verdicts and {v["verdict"] for v in verdicts.values()} == {"not run yet"}


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_steps_to_counts_rounds_up_to_the_level(sparsity: float) -> None:
    steps_to = load_experiment_report("brix2020").steps_to
    levels = [level(r, s, 0.0, steps=100 + r) for r, s in enumerate([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9])]
    upto = [lv for lv in levels if lv["sparsity"] <= sparsity]
    assert steps_to(levels, sparsity) == sum(100 + lv["round"] for lv in upto)
    with pytest.raises(ValueError):
        steps_to(levels, 0.85)
