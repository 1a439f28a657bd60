"""The experiments' report verdicts (experiments/reporting.py and each experiments/<paper>/report.py) on fake run
folders whose results.json (and study JSON) files the tests write: a difference within the noise threshold is a
tie, never a win; a verdict between arms that trained unequal steps says so; a run still going (or not started)
renders "not run yet" / "running: N of M levels" instead of raising."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from experiments.reporting import EQUAL_STEPS, NOT_RUN, by_gap, run_state, tie_rule, with_compute
from tests.e2e.conftest import load_experiment_report


def write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


RUNNING = {"status": "running", "metrics": {}, "config": {}}  # what results.json holds while round 0 trains


# --- the shared rules ---------------------------------------------------------------------------------------


def test_tie_rule_and_compute_note() -> None:
    assert tie_rule(0.01, 0.3) == 0 and tie_rule(-0.29, 0.3) == 0
    assert tie_rule(0.31, 0.3) == 1 and tie_rule(-0.31, 0.3) == -1
    assert by_gap(0.01, 0.3) == "inconclusive"
    assert with_compute("agree", [(6000, 7200)]) == "agree (unequal compute: 6,000 vs 7,200 steps)"
    assert with_compute("agree", [(7200, 7200 * (1 - EQUAL_STEPS))]) == "agree"  # within the 2% tolerance
    assert with_compute("agree", [(1000, 1000), (7200, 1200)]) == "agree (unequal compute: 7,200 vs 1,200 steps)"


def test_run_state(tmp_path: Path) -> None:
    assert run_state(tmp_path / "missing") == NOT_RUN
    write(tmp_path / "started" / "results.json", RUNNING)
    assert run_state(tmp_path / "started") == NOT_RUN
    level = {"stage": "dense", "metrics": {"test/bleu": 1.0}, "time": {"steps": 0}}
    write(tmp_path / "going" / "results.json", {**RUNNING, "levels": [level, level]})
    assert run_state(tmp_path / "going", levels=3) == "running: 2 of 3 levels"
    write(tmp_path / "done" / "results.json", {"status": "completed", "metrics": {"test/bleu": 1.0}, "levels": [level]})
    assert run_state(tmp_path / "done") is None


# --- brix2020 -----------------------------------------------------------------------------------------------


def brix_level(r: int, sparsity: float, bleu: float, steps: int = 100) -> dict[str, Any]:
    return {
        "round": r,
        "sparsity": sparsity,
        "metrics": {"test/bleu": bleu, "test/ter": 100 - bleu},
        "memory": {"model": {"csc_bytes": 1000}},
        "time": {"steps": steps},
    }


def brix_run(root: Path, name: str, levels: list[dict[str, Any]], status: str = "completed") -> None:
    write(root / name / "results.json", {"status": status, "metrics": {"test/bleu": 1.0}, "levels": levels,
                                         "wall_time_s": 60.0})  # fmt: skip


def test_brix_flags_unequal_steps(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    brix_run(runs, "slt", [brix_level(r, s, 90.0) for r, s in enumerate([0.0, 0.5, 0.9])])  # 300 steps to 90%
    brix_run(runs, "mp_slt", [brix_level(0, 0.6, 85.0, steps=100), brix_level(1, 0.9, 80.0, steps=150)])  # 250
    brix_run(runs, "mp_matched", [brix_level(0, 0.9, 89.99, steps=297)])  # 1% fewer steps: equal compute
    verdicts = load_experiment_report("brix2020").report(runs, tmp_path / "out")
    assert verdicts["MP does not find winning tickets: MP-SLT falls behind SLT"]["verdict"] == (
        "agree (unequal compute: 300 vs 250 steps)"
    )
    assert verdicts["(compute-matched) SLT beats MP trained as many steps, at 90%"]["verdict"] == "inconclusive"


def test_brix_renders_runs_not_finished(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    brix_run(runs, "slt", [brix_level(r, s, 90.0) for r, s in enumerate([0.0, 0.5, 0.9])])
    write(runs / "lt" / "results.json", RUNNING)  # started, nothing finished
    # two rounds finished, the third level written without its scores yet
    brix_run(runs, "clt", [brix_level(0, 0.0, 90.0), brix_level(1, 0.1, 90.0), {"round": 2, "sparsity": 0.2}],
             status="running")  # fmt: skip
    verdicts = load_experiment_report("brix2020").report(runs, tmp_path / "out")
    assert verdicts["LT (rewinding to θ_0) falls behind SLT at high sparsity"]["verdict"] == NOT_RUN
    text = (tmp_path / "out" / "tables.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "not run yet" in rows["lt"] and "running: 2 levels finished" in rows["clt"]
    assert "not run yet" in rows["random_matched"]  # no folder at all


# --- michel2019 ---------------------------------------------------------------------------------------------

FRACTIONS = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]


def curve(bleu: float, step: float = 10.0) -> list[dict[str, float]]:
    return [{"fraction": f, "bleu": bleu - step * i} for i, f in enumerate(FRACTIONS)]


def michel_run(root: Path, ih: float, random: float, by_type: dict[str, float]) -> Path:
    """A dense run and its heads.json: 1 layer of 2 heads per attention type; the I_h curve starts at `ih`, the
    random ones at `random`; each type's curve is `by_type` at every fraction."""
    run = root / "dense"
    write(run / "results.json", {"status": "completed", "metrics": {"test/bleu": 90.0},
                                 "levels": [{"metrics": {"test/bleu": 90.0}, "time": {"steps": 500}}]})  # fmt: skip
    heads = [f"{a}.0.{b}.h{j}" for a, b in (("enc", "sa"), ("dec", "sa"), ("dec", "ea")) for j in range(2)]
    write(
        run / "heads" / "heads.json",
        {
            "baseline_bleu": 90.0,
            "ablation_delta_bleu": {h: -0.1 for h in heads},
            "keep_one_head": {"enc.0.sa": {"head": 0, "test": 80.0, "delta_test": -10.0}},
            "pruning_curves": {
                "all heads": curve(ih),
                "all heads, by ablation": curve(ih),
                **{k: [{"fraction": f, "bleu": v} for f in FRACTIONS] for k, v in by_type.items()},
                "all heads, random order 1": curve(random),
                "all heads, random order 2": curve(random),
            },
        },
    )
    return run


def test_michel_differences_within_noise_are_ties(tmp_path: Path) -> None:
    report = load_experiment_report("michel2019")
    # I_h 0.01 BLEU ahead of random order at every fraction; enc-dec attention 0.01 below dec self-attention
    run = michel_run(tmp_path, ih=80.01, random=80.0, by_type={"E:SA": 85.0, "D:SA": 70.01, "D:EA": 70.0})
    verdicts = report.report(run, tmp_path / "out")
    assert verdicts["pruning by I_h beats pruning in random order"]["verdict"] == "inconclusive"
    assert verdicts["enc-dec attention is the most sensitive to pruning"]["verdict"] == "inconclusive"
    # beyond the threshold the same rules decide
    run = michel_run(tmp_path / "b", ih=82.0, random=80.0, by_type={"E:SA": 85.0, "D:SA": 72.0, "D:EA": 70.0})
    verdicts = report.report(run, tmp_path / "out_b")
    assert verdicts["pruning by I_h beats pruning in random order"]["verdict"] == "agree"
    assert verdicts["enc-dec attention is the most sensitive to pruning"]["verdict"] == "agree"


@pytest.mark.parametrize("heads_written", [False, True])
def test_michel_renders_a_run_not_finished(tmp_path: Path, heads_written: bool) -> None:
    run = michel_run(tmp_path, ih=80.0, random=70.0, by_type={"E:SA": 85.0, "D:SA": 72.0, "D:EA": 70.0})
    if heads_written:  # the dense run is still training (a heads.json of an earlier attempt lies beside it)
        write(run / "results.json", {**RUNNING, "levels": []})
    else:  # the dense run finished; `prunelab heads` has not run yet
        (run / "heads" / "heads.json").unlink()
    verdicts = load_experiment_report("michel2019").report(run, tmp_path / "out")
    assert verdicts and {v["verdict"] for v in verdicts.values()} == {NOT_RUN}
    assert NOT_RUN in (tmp_path / "out" / "tables.md").read_text()


# --- wangtu2020 ---------------------------------------------------------------------------------------------


def wangtu_runs(root: Path, contribution: dict[str, float], rewind_steps: tuple[int, int] = (1000, 1000)) -> Path:
    """A dense run with components.json (one layer, contribution per type), and a finished rewind run."""
    dense = root / "dense"
    write(dense / "results.json", {"status": "completed", "metrics": {"test/bleu": 90.0},
                                   "levels": [{"metrics": {"test/bleu": 90.0}, "time": {"steps": 5000}}]})  # fmt: skip
    names = {"E:SA": "enc.0.sa", "E:FF": "enc.0.ff", "D:SA": "dec.0.sa", "D:EA": "dec.0.ea", "D:FF": "dec.0.ff"}
    write(
        dense / "components" / "components.json",
        {
            "split": "valid",
            "score": "BLEU",
            "baseline_bleu": 90.0,
            "decoding": {"beam_size": 1},
            "contribution": {names[k]: v for k, v in contribution.items()},
            "contribution_clip": 9.0,
            "criticality": {},
            "group_ablation": {"by contribution": [{"zeroed": 0, "component": None, "bleu": 90.0}]},
        },
    )
    cont, rew = rewind_steps
    levels = [
        {"stage": "dense", "metrics": {"test/bleu": 90.0}, "time": {"steps": 0}},
        {"stage": "continue", "metrics": {"test/bleu": 90.5}, "time": {"steps": cont}},
        {"stage": "rewind", "metrics": {"test/bleu": 91.0}, "time": {"steps": rew}},
    ]
    write(root / "rewind" / "results.json", {"status": "completed", "metrics": {"test/bleu": 91.0}, "levels": levels})
    return dense


def test_wangtu_ties_and_unequal_steps(tmp_path: Path) -> None:
    report = load_experiment_report("wangtu2020")
    # dec self-attention 0.001 below enc FF (the threshold: 0.3 BLEU / C 9.0 = 0.033 in contribution units)
    contribution = {"E:SA": 0.5, "E:FF": 0.201, "D:SA": 0.2, "D:EA": 0.6, "D:FF": 0.599}
    dense = wangtu_runs(tmp_path, contribution, rewind_steps=(1000, 1200))
    verdicts = report.report(dense, tmp_path / "retrain", tmp_path / "rewind", tmp_path / "out")
    assert verdicts["decoder self-attention is the least important component type"]["verdict"] == "inconclusive"
    assert verdicts["decoder feed-forward is the most important component type"]["verdict"] == "inconclusive"
    rewind = verdicts[
        "unimportant components are not useless: rewinding them to θ_0 and fine-tuning beats continued training"
    ]
    assert rewind["verdict"] == "agree (unequal compute: 1,200 vs 1,000 steps)"


def test_wangtu_renders_runs_not_finished(tmp_path: Path) -> None:
    report = load_experiment_report("wangtu2020")
    dense = wangtu_runs(tmp_path, {"E:SA": 0.5, "E:FF": 0.3, "D:SA": 0.1, "D:EA": 0.6, "D:FF": 0.9})
    # the retrain run has scored the dense model and the retrained one; the shallow baseline still trains
    levels = [
        {"stage": "dense", "metrics": {"test/bleu": 90.0}, "time": {"steps": 0}, "params": {"total": 10}},
        {"stage": "retrain", "metrics": {"test/bleu": 89.0}, "time": {"steps": 900}, "params": {"total": 8}},
    ]
    write(tmp_path / "retrain" / "results.json", {**RUNNING, "levels": levels, "components": {"chosen": ["dec.0.sa"]}})
    verdicts = report.report(dense, tmp_path / "retrain", tmp_path / "rewind", tmp_path / "out")
    retrain = verdicts["the pruned architecture, retrained, beats a shallower model of the same size"]
    assert retrain["verdict"] == NOT_RUN and "running: 2 of 3 levels" in retrain["evidence"]
    assert "running: 2 of 3 levels" in (tmp_path / "out" / "tables.md").read_text()
    # the dense run itself not finished: every verdict waits
    write(dense / "results.json", RUNNING)
    verdicts = report.report(dense, tmp_path / "retrain", tmp_path / "rewind", tmp_path / "out")
    assert {v["verdict"] for v in verdicts.values()} == {NOT_RUN}


# --- wu2022 -------------------------------------------------------------------------------------------------


def test_wu_renders_runs_not_finished(tmp_path: Path) -> None:
    """The AttendOut run is past its start level only, the baseline has not started: no model is loaded."""
    start = {"stage": "pretrained", "metrics": {"test/acc": 0.9}, "time": {"train_s": 0.0}}
    write(tmp_path / "attendout" / "results.json", {**RUNNING, "levels": [start]})
    verdicts = load_experiment_report("wu2022").report(tmp_path / "attendout", tmp_path / "baseline", tmp_path / "out")
    assert verdicts and {v["verdict"] for v in verdicts.values()} == {NOT_RUN}
    text = (tmp_path / "out" / "tables.md").read_text()
    assert "running: 1 levels finished" in text and "| baseline |" in text and NOT_RUN in text
