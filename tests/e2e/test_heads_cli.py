"""`prunelab heads RUN_DIR` on a trained run: every figure and table, consistent with the run itself."""

from __future__ import annotations

import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, Run, read_hypotheses, read_test_split, train_here

pytestmark = pytest.mark.xdist_group("heads_cli")  # one trained run for the module's tests


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A smoke run (20 valid and 20 test sentences); each test writes its study to its own folder."""
    run = train_here(tmp_path_factory.mktemp("heads_cli") / "run", "experiment=smoke", "logger=csv", "task.beam_size=1")
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_head_analysis_of_a_run(run: Run) -> None:
    # the run decodes the test set greedily (task.beam_size=1): the analysis at beam 1 must reproduce its test BLEU
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prunelab.cli.main",
            "heads",
            str(run.dir),
            "--beam-size",
            "1",
            "--importance-batches",
            "2",
            "--random-orders",
            "2",
            "--speed-batch-sizes",
            "1,4",
            "--speed-sentences",
            "6",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run.dir / "heads"
    report = json.loads((out / "heads.json").read_text())
    assert report["baseline_bleu"] == pytest.approx(run.results["metrics"]["test/bleu"], abs=1e-6)
    heads = set(report["importance"])
    assert heads == set(report["ablation_delta_bleu"])
    assert len(heads) == 3 * 2  # smoke: 1 encoder + 1 decoder layer, 2 heads; E:SA, D:SA, D:EA
    for comp in ("enc.0.sa", "dec.0.sa", "dec.0.ea"):  # normalised per layer
        v = [report["importance"][f"{comp}.h{j}"] for j in range(2)]
        assert sum(x * x for x in v) == pytest.approx(1.0, abs=1e-5)
        assert report["keep_one_head"][comp]["head"] in (0, 1)
    curves = report["pruning_curves"]
    randoms = ["all heads, random order 1", "all heads, random order 2"]
    assert set(curves) == {"all heads", "E:SA", "D:SA", "D:EA", "all heads, by ablation", *randoms}
    # a random curve masks first the head that the seeded shuffle puts first: its BLEU is that head's ablation
    order = sorted(heads)
    random.Random(0).shuffle(order)
    assert curves[randoms[0]][1]["bleu"] == pytest.approx(
        report["baseline_bleu"] + report["ablation_delta_bleu"][order[0]], abs=1e-6
    )
    assert [p["fraction"] for p in curves[randoms[1]]] == [p["fraction"] for p in curves["all heads"]]
    # the comparison curve masks first the head whose ablation changed BLEU the least harmfully
    deltas = report["ablation_delta_bleu"]
    first = curves["all heads, by ablation"][1]  # 1 of 6 heads masked (10% rounds up to one head)
    assert first["fraction"] == pytest.approx(1 / 6)
    assert first["bleu"] == pytest.approx(report["baseline_bleu"] + max(deltas.values()), abs=1e-6)
    assert curves["all heads"][0] == {"fraction": 0.0, "bleu": pytest.approx(report["baseline_bleu"])}
    assert curves["all heads"][-1]["fraction"] == 1.0
    # Table 4: half the heads (3 of 6, the lowest I_h) cut out, timed against the unpruned model by batch size
    speed = report["speed"]
    assert speed["fraction_pruned"] == 0.5
    rows = speed["by_batch_size"]
    assert [r["batch_size"] for r in rows] == [1, 4] and all(r["sentences"] == 6 for r in rows)
    assert all(r["dense_per_s"] > 0 and r["pruned_per_s"] > 0 for r in rows)
    assert all(r["speedup"] == pytest.approx(r["pruned_per_s"] / r["dense_per_s"]) for r in rows)
    assert rows[0]["dense_score"] == pytest.approx(rows[1]["dense_score"], abs=1e-6)  # batching changes no output
    for name in (
        "speed.csv",
        "importance.png",
        "ablation.png",
        "curves.png",
        "importance.csv",
        "ablation.csv",
        "keep_one.csv",
    ):
        assert (out / name).stat().st_size > 0, name


def test_head_study_scores_at_most_max_examples(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--max-examples N`: every score of the study on the same N examples of valid and of test (a seeded
    sample), stated in heads.json, and one progress bar whose total, counted in advance, is what it ran."""
    import sacrebleu

    from prunelab.cli.main import main
    from prunelab.scoring.scoring import BleuScorer

    # main() gives the prunelab logger a handler on this test's (captured, later closed) stderr: keep it to this test
    monkeypatch.setattr(logging.getLogger("prunelab"), "handlers", [])
    assert main(["heads", str(run.dir), "--max-examples", "-1"]) == 2  # one clear error, before any work

    seen: list[list[int]] = []  # the examples each scoring was given, counted here
    score = BleuScorer.score

    def counting(self: BleuScorer, model: Any, batches: Any) -> float:
        seen.append(sorted(int(i) for b in batches for i in b["idx"]))
        return score(self, model, batches)

    monkeypatch.setattr(BleuScorer, "score", counting)
    args = ["--beam-size", "1", "--importance-batches", "1", "--random-orders", "1", "--step", "0.5"]
    assert main(["heads", str(run.dir), "--max-examples", "7", "--seed", "3", "--out", str(tmp_path), *args]) == 0
    report = json.loads((tmp_path / "heads.json").read_text())
    ev = report["evaluation"]
    valid, test = ev["splits"]["valid"], ev["splits"]["test"]
    for split in (valid, test):
        assert split["available"] == 20 and split["max_examples"] == 7 and split["used"] == 7
        assert split["drawn"] == "seeded random sample" and split["seed"] == 3
        assert len(set(split["indices"])) == 7 and set(split["indices"]) <= set(range(20))
    assert ev["run_valid_max_sentences"] is None
    # every scoring saw exactly the 7 examples of its split that the report names, and the report counts them all
    assert seen and all(s in (valid["indices"], test["indices"]) for s in seen)
    assert seen.count(test["indices"]) >= 1 + 6 and len(seen) == ev["evaluations"]  # baseline + one per head
    # the baseline is the BLEU of those 7 test sentences: the run's own greedy translations of them, rescored
    hyps, (_, refs) = read_hypotheses(run.dir), read_test_split(run.results)
    idx = test["indices"]
    expected = sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
    assert report["baseline_bleu"] == pytest.approx(expected, abs=1e-6)
    # the progress bar: one bar over the whole study, ending at the total it announced
    n, total = re.findall(r"heads study:[^\r\n]*?(\d+)/(\d+)", capsys.readouterr().err)[-1]
    assert int(n) == int(total) == ev["evaluations"]
