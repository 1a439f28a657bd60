"""`prunelab heads RUN_DIR` on a trained run: every figure and table, consistent with the run itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, train


def test_head_analysis_of_a_run(tmp_path: Path, smoke: list[str]) -> None:
    run = train(tmp_path / "run", *smoke)
    assert run.returncode == 0, run.stderr[-3000:]
    # the run decodes the test set with the task's beam 4: the analysis at beam 4 must reproduce its test BLEU
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prunelab.cli.main",
            "heads",
            str(run.dir),
            "--beam-size",
            "4",
            "--importance-batches",
            "2",
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
    assert set(curves) == {"all heads", "E:SA", "D:SA", "D:EA", "all heads, by ablation"}
    # the comparison curve masks first the head whose ablation changed BLEU the least harmfully
    deltas = report["ablation_delta_bleu"]
    first = curves["all heads, by ablation"][1]  # 1 of 6 heads masked (10% rounds up to one head)
    assert first["fraction"] == pytest.approx(1 / 6)
    assert first["bleu"] == pytest.approx(report["baseline_bleu"] + max(deltas.values()), abs=1e-6)
    assert curves["all heads"][0] == {"fraction": 0.0, "bleu": pytest.approx(report["baseline_bleu"])}
    assert curves["all heads"][-1]["fraction"] == 1.0
    for name in ("importance.png", "ablation.png", "curves.png", "importance.csv", "ablation.csv", "keep_one.csv"):
        assert (out / name).stat().st_size > 0, name
