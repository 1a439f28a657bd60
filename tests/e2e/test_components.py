"""Wang & Tu (2020) from the command line: `prunelab components RUN_DIR`, `pruner=components`, and the
importance-over-training callback, on a small trained run."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prunelab.criteria.components import spearman
from tests.e2e.conftest import ROOT, Run, load_experiment_report, train_here

pytestmark = pytest.mark.xdist_group("components")
SHAPE = ["model.dec_layers=2"]  # 1 encoder + 2 decoder layers: 8 components, and a shallow baseline exists


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Run:
    smoke = ["experiment=smoke", "logger=csv"]
    run = train_here(
        tmp_path_factory.mktemp("components") / "dense", *smoke, *SHAPE, "track_importance.every_n_epochs=1"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_importance_over_training_writes_heatmaps(dense: Run) -> None:
    out = dense.dir / "importance" / "round_0"
    pngs = sorted(out.glob("epoch_*.png"))
    assert pngs and all(p.stat().st_size > 0 for p in pngs)
    rows = list(csv.DictReader((out / "contribution.csv").open()))
    assert {r["component"] for r in rows} == {"enc.0.sa", "enc.0.ff"} | {
        f"dec.{i}.{k}" for i in range(2) for k in ("sa", "ea", "ff")
    }
    assert len(rows) == 8 * len(pngs)  # one score per component per heatmap
    for epoch in {r["epoch"] for r in rows}:  # Eq. 1 from the drops: min(max(d, 0), T) / T, T the largest clipped
        pairs = [(float(r["drop"]), float(r["contribution"])) for r in rows if r["epoch"] == epoch]
        assert all(c == 0.0 for d, c in pairs if d <= 0) and all(c > 0.0 for d, c in pairs if d > 0)
        if all(d <= 0 for d, _ in pairs):
            continue
        ones = [d for d, c in pairs if c == pytest.approx(1.0)]
        partial = [(d, c) for d, c in pairs if 0.0 < c < 1.0 and c != pytest.approx(1.0)]
        assert ones and len(ones) + len(partial) == sum(d > 0 for d, _ in pairs)
        if partial:  # below the clip the score is proportional to the drop, with one constant T for all
            top = partial[0][0] / partial[0][1]
            assert all(d / c == pytest.approx(top, rel=1e-5) for d, c in partial)
            assert all(d >= top * (1 - 1e-5) for d in ones) and all(d < top for d, _ in partial)


def test_components_analysis(dense: Run) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "prunelab.cli.main", "components", str(dense.dir), "--tolerance", "0.25", "--grid", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full decodes" in proc.stdout
    out = dense.dir / "components"
    rep = json.loads((out / "components.json").read_text())
    # the analysis decodes valid as the run validated it: same checkpoint, same beam, same BLEU
    assert rep["baseline_bleu"] == pytest.approx(dense.results["metrics"]["val/bleu"], abs=1e-6)
    assert len(rep["contribution"]) == 8
    top = max(rep["contribution"].values())
    assert top in (0.0, pytest.approx(1.0))  # normalised by the largest clipped drop
    alpha = rep["criticality"]["alpha"]
    assert set(alpha) == set(rep["contribution"]) and all(0.0 <= a <= 1.0 for a in alpha.values())
    assert {"contribution_seconds", "contribution_passes", "full_decode_seconds"} <= set(rep["cost"])  # cost stated
    rho = rep["rank_agreement"]["spearman_contribution_criticality"]
    assert rho == (pytest.approx(spearman(rep["contribution"], alpha)) if rho is not None else None)
    curve = rep["group_ablation"]["by contribution"]
    assert [p["zeroed"] for p in curve] == list(range(9))
    for name in ("drops.csv", "group_ablation.csv", "heatmaps.png", "group_ablation.png"):
        assert (out / name).stat().st_size > 0, name


def test_components_study_scores_at_most_max_examples(
    dense: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--max-examples N`: the contribution, criticality and group ablation all score the same N test examples
    (a seeded sample), stated in components.json; one progress bar ends at the total it announced."""
    from prunelab.cli.main import main
    from prunelab.scoring.scoring import BleuScorer

    # main() gives the prunelab logger a handler on this test's (captured, later closed) stderr: keep it to this test
    monkeypatch.setattr(logging.getLogger("prunelab"), "handlers", [])
    seen: list[list[int]] = []  # the examples each scoring was given, counted here

    def counting(name: str) -> Any:
        method = getattr(BleuScorer, name)

        def wrapped(self: BleuScorer, model: Any, batches: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(sorted(int(i) for b in batches for i in b["idx"]))
            return method(self, model, batches, *args, **kwargs)

        return wrapped

    for name in ("score", "variants", "ablation"):
        monkeypatch.setattr(BleuScorer, name, counting(name))
    args = ["--split", "test", "--max-examples", "6", "--tolerance", "0.25", "--grid", "2", "--out", str(tmp_path)]
    assert main(["components", str(dense.dir), *args]) == 0
    rep = json.loads((tmp_path / "components.json").read_text())
    test = rep["evaluation"]["splits"]["test"]
    assert set(rep["evaluation"]["splits"]) == {"test"}
    assert test["available"] == 20 and test["max_examples"] == 6 and test["used"] == 6
    assert test["drawn"] == "seeded random sample" and test["seed"] == 0
    assert len(set(test["indices"])) == 6 and set(test["indices"]) <= set(range(20))
    # ablation + criticality's baseline and searches + group ablation: each on exactly the stated examples
    searches = sum(rep["criticality"]["evaluations"].values())
    assert seen == [test["indices"]] * (1 + 1 + searches + 1)
    assert rep["cost"]["sentences_without_early_stop"] == 6 * (8 + 1)  # 8 components and the unablated model
    n, total = re.findall(r"components study:[^\r\n]*?(\d+)/(\d+)", capsys.readouterr().err)[-1]
    assert int(n) == int(total) == rep["evaluation"]["evaluations"] == 2 * (8 + 1) + 1 + searches


def test_pruner_components_rewind_and_retrain(dense: Run) -> None:
    smoke = ["experiment=smoke", "logger=csv", *SHAPE, f"ckpt={dense.dir}", "pruner=components", "sparsity=0.25"]
    rewind = train_here(dense.dir.parent / "rewind", *smoke, "pruner.mode=rewind", "pruner.finetune_steps=4")
    assert rewind.returncode == 0, rewind.stderr[-3000:]
    lv = rewind.results["levels"]
    assert [x["stage"] for x in lv] == ["dense", "continue", "rewind"]
    assert lv[0]["metrics"]["val/bleu"] == pytest.approx(dense.results["metrics"]["val/bleu"], abs=1e-6)
    assert len(rewind.results["components"]["chosen"]) == 2  # 25% of 8
    assert lv[0]["params"]["total"] == lv[1]["params"]["total"] == lv[2]["params"]["total"]

    retrain = train_here(dense.dir.parent / "retrain", *smoke, "pruner.mode=retrain")
    assert retrain.returncode == 0, retrain.stderr[-3000:]
    lv = retrain.results["levels"]
    assert [x["stage"] for x in lv] == ["dense", "retrain", "shallow"]
    chosen = retrain.results["components"]["chosen"]
    assert len(chosen) == 2
    assert lv[1]["params"]["total"] < lv[0]["params"]["total"]
    assert lv[2]["params"]["total"] < lv[0]["params"]["total"]  # one decoder layer fewer
    present = set(retrain.results["components"]["present"])
    assert present == {"enc.0.sa", "enc.0.ff", "dec.0.sa", "dec.0.ea", "dec.0.ff"}  # the shallow model, last

    # experiments/wangtu2020/report.py reads these three runs: its verdicts follow from their numbers
    if not (dense.dir / "components" / "components.json").exists():  # the analysis test ran elsewhere
        from prunelab.studies.component_study import analyse_components

        analyse_components(dense.dir, tolerance=0.25, grid=2)
    out = dense.dir.parent / "wangtu_report"
    verdicts = load_experiment_report("wangtu2020").report(dense.dir, retrain.dir, rewind.dir, out)
    comp = json.loads((dense.dir / "components" / "components.json").read_text())
    by_type: dict[str, list[float]] = {}
    for name, v in comp["contribution"].items():  # enc.0.sa -> E:SA
        by_type.setdefault(f"{name[0].upper()}:{name.split('.')[2].upper()}", []).append(v)
    means = {k: sum(v) / len(v) for k, v in by_type.items()}
    # D:SA is the least when below every other type by more than 0.3 BLEU in contribution units (0.3 / C)
    gaps = [v - means["D:SA"] for k, v in means.items() if k != "D:SA"]
    clip = comp["contribution_clip"]  # 0 for a model at 0 BLEU: no difference is beyond the noise
    noise = 0.3 / clip if clip > 0 else math.inf
    least = "agree" if min(gaps) > noise else ("disagree" if min(gaps) < -noise else "inconclusive")
    assert verdicts["decoder self-attention is the least important component type"]["verdict"] == least
    gain = rewind.results["levels"][2]["metrics"]["test/bleu"] - rewind.results["levels"][1]["metrics"]["test/bleu"]
    rewind_claim = next(v for c, v in verdicts.items() if c.startswith("unimportant components are not useless"))
    assert rewind_claim["verdict"] == ("agree" if gain > 0.3 else "disagree" if gain < -0.3 else "inconclusive")
    text = (out / "tables.md").read_text()
    assert "## Verdicts" in text and "Table 3" in text and "Table 4" in text
    dense_steps = sum(x["time"]["steps"] for x in dense.results["levels"])
    assert dense_steps > 0  # the full model's row shows the steps it was trained, not this run's 0
    assert f"| full model | {retrain.results['levels'][0]['params']['total']} | {dense_steps} |" in text
    assert (out / "heatmaps.png").stat().st_size > 0
