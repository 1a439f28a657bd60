"""Classification end to end: the synthetic task, pruners on the classifier, config errors. Runs go through
train.py's own composition and train() in this process (train_here); the command line's one-line errors and DDP's
process launch run `python train.py` itself."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    assert_export_round_trip,
    check_scores_from_files,
    load_experiment_report,
    train,
    train_here,
)

CLS = ["model=classifier_tiny", "data=synthetic_classification", "experiment=smoke", "logger=csv"]


def test_classification_run_writes_accuracy(tmp_path: Path) -> None:
    run = train_here(tmp_path / "run", *CLS)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed"
    for k in ("val/acc", "val/f1", "val/mcc", "test/acc", "test/f1", "test/mcc"):
        assert k in res["metrics"], k
    check_scores_from_files(run)  # test/acc is that of test.hyp.txt against the gold labels
    assert res["labels"] == ["affirmed", "negated"]
    preds = (run.dir / "test.hyp.txt").read_text().split()
    assert len(preds) == 20 and set(preds) <= {"affirmed", "negated"}


def test_mp_and_heads_on_the_classifier(tmp_path: Path) -> None:
    mp = train_here(tmp_path / "mp", *CLS, "pruner=mp", "sparsity=0.5")
    assert mp.returncode == 0, mp.stderr[-3000:]
    assert mp.results["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    heads = train_here(tmp_path / "heads", *CLS, "pruner=heads", "sparsity=0.5", f"ckpt={mp.dir}")
    assert heads.returncode == 0, heads.stderr[-3000:]
    lv = heads.results["levels"]
    assert [x["stage"] for x in lv] == ["dense", "pruned"]
    assert lv[0]["metrics"]["test/acc"] == pytest.approx(mp.results["metrics"]["test/acc"])
    assert len(heads.results["heads"]["removed"]) == 1  # smoke: 1 encoder layer x 2 heads
    assert lv[1]["params"]["total"] < lv[0]["params"]["total"]
    assert_export_round_trip(mp.dir)  # a classifier's export reloads (it failed on "dec.0.sa.gate")
    assert_export_round_trip(heads.dir)  # with heads removed too


def test_lottery_family_on_the_classifier(tmp_path: Path) -> None:
    """SLT-MP (Brix et al.): a dense round, then a rewound round at the target sparsity, on the classifier."""
    run = train_here(tmp_path / "slt", *CLS, "pruner=slt_mp", "sparsity=0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    lv = run.results["levels"]
    assert [round(x["sparsity"], 2) for x in lv] == [0.0, 0.5]
    assert run.results["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    assert all("test/acc" in x["metrics"] for x in lv)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=transformer_tiny", "data=synthetic_classification"], "cannot be built for classification data"),
        (["model=classifier_tiny", "data=synthetic_translation"], "cannot be built for translation data"),
    ],
)
def test_mixing_kinds_is_one_clear_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    run = train(tmp_path / "run", "experiment=smoke", "logger=csv", *overrides)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_a_classifier_on_language_modelling_data_names_that_kind(tmp_path: Path) -> None:
    """The wrong-model error names the data's own kind (it called language-modelling data translation data)."""
    run = train(tmp_path / "run", "logger=csv", "model=classifier_tiny", "data=synthetic_lm", "data.train_sentences=99")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "model=classifier_tiny cannot be built for language_modeling data" in run.stderr


def test_tsv_files_train_end_to_end(tmp_path: Path) -> None:
    """Real-data path: a header, string labels, a sentiment rule a model can learn; results name the labels."""
    words = "film plot actor story scene music acting ending script cast".split()
    root = tmp_path / "sst"
    root.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 300), ("dev", 30), ("test", 30)):
        rows = ["sentence\tlabel"]
        for _ in range(n):  # the mood word decides; the other words are independent of the label
            mood = rng.choice(("good", "bad"))
            rows.append(f"the {rng.choice(words)} was {mood} and the {rng.choice(words)} too\t{mood}")
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = [
        "model=classifier_tiny",
        "data=tsv_classification",
        f"data.dir={root}",
        "data.vocab_size=60",
        "logger=csv",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.enc_layers=1",
        "trainer.max_steps=100",
        "trainer.val_check_interval=50",
        "task.warmup_steps=10",
        "trainer.enable_progress_bar=false",
    ]
    run = train_here(tmp_path / "run", *args)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["labels"] == ["bad", "good"]
    assert res["metrics"]["test/acc"] >= 0.9  # the label is one word of the text
    assert list(root.glob("spm.*.model")), "the subword model is cached next to the data"


def test_head_analysis_of_a_classifier(tmp_path: Path) -> None:
    """Michel et al.'s BERT studies: the same `prunelab heads`, scored by accuracy."""
    import json
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    run = train_here(tmp_path / "run", *CLS, "model.n_heads=4", "model.d_model=32")
    assert run.returncode == 0, run.stderr[-3000:]
    cmd = [sys.executable, "-m", "prunelab.cli.main", "heads", str(run.dir), "--importance-batches", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((run.dir / "heads" / "heads.json").read_text())
    assert rep["score"] == "accuracy (%)"
    assert rep["baseline_bleu"] == pytest.approx(100 * run.results["metrics"]["test/acc"], abs=1e-4)
    assert set(rep["importance"]) == {f"enc.0.sa.h{j}" for j in range(4)}
    randoms = {f"all heads, random order {r}" for r in (1, 2, 3)}
    assert set(rep["pruning_curves"]) == {"all heads", "E:SA", "all heads, by ablation", *randoms}  # no decoder heads
    assert [p["fraction"] for p in rep["pruning_curves"]["E:SA"]] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_components_on_a_classifier(tmp_path: Path) -> None:
    """Wang & Tu on an encoder-only classifier: E:SA and E:FF scored by accuracy drop, the retrain and
    shallow rows of Table 3, then `prunelab components` on the finished run."""
    import json
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT

    run = train_here(
        tmp_path / "run", *CLS, "model.enc_layers=2", "pruner=components", "pruner.mode=retrain", "sparsity=0.5"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    lv = res["levels"]
    assert [x["stage"] for x in lv] == ["dense", "retrain", "shallow"]
    comp = res["components"]
    assert set(comp["contribution"]) == {"enc.0.sa", "enc.0.ff", "enc.1.sa", "enc.1.ff"}
    assert len(comp["chosen"]) == 2 and max(comp["contribution"].values()) in (0.0, 1.0)
    # d=32, ff=64: a self-attention sub-layer is 4 (32x32 + 32) + LayerNorm 64, a feed-forward one
    # 32x64 + 64 + 64x32 + 32 + LayerNorm 64
    size = {"sa": 4 * (32 * 32 + 32) + 64, "ff": 32 * 64 + 64 + 64 * 32 + 32 + 64}
    removed = sum(size[n.split(".")[2]] for n in comp["chosen"])
    assert lv[1]["params"]["total"] == lv[0]["params"]["total"] - removed
    assert "test/acc" in lv[1]["metrics"] and "test/acc" in lv[2]["metrics"]

    cmd = [sys.executable, "-m", "prunelab.cli.main", "components", str(run.dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "baseline accuracy (%)" in proc.stdout
    rep = json.loads((run.dir / "components" / "components.json").read_text())
    assert rep["score"] == "accuracy (%)"
    assert rep["baseline_bleu"] == pytest.approx(100 * res["metrics"]["val/acc"], abs=1e-4)
    names = {"enc.0.sa", "enc.0.ff", "enc.1.sa", "enc.1.ff"}
    present = set(comp["present"])  # the shallow model the run ended with
    assert set(rep["contribution"]) == present and present <= names
    clip = 0.1 * rep["baseline_bleu"]
    clipped = {n: min(max(rep["baseline_bleu"] - rep["bleu_zeroed"][n], 0.0), clip) for n in present}
    top = max(clipped.values())
    for n in present:  # Eq. 1 from the accuracy drops
        assert rep["contribution"][n] == pytest.approx(clipped[n] / top if top > 0 else 0.0, abs=1e-9)
    assert set(rep["criticality"]["alpha"]) == present
    assert (run.dir / "components" / "heatmaps.png").stat().st_size > 0


def test_attendout_end_to_end(tmp_path: Path) -> None:
    """Round 0 trains D and A side by side with G-Net cycles; threshold 1.0 makes G-Net drop every map, so
    the structural pruning path runs: the pruned model has no Q/K and is evaluated as level "pruned"."""
    run = train_here(tmp_path / "run", *CLS, "pruner=attendout", "pruner.every=3", "pruner.threshold=1.0")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    lv = res["levels"]
    assert [x["stage"] for x in lv] == ["attendout", "pruned"]
    assert res["attendout"]["proportion_pruned"] == "1/1" and res["attendout"]["pruned_layers"] == ["enc.0.sa"]
    assert sum(res["attendout"]["rewards"].values()) == 20 // 3  # one cycle per 3 of the 20 steps
    assert all(0.0 < p < 1.0 for p in res["attendout"]["keep_probability"])
    assert lv[1]["params"]["total"] == lv[0]["params"]["total"] - 2 * (32 * 32 + 32)  # Q and K gone
    check_scores_from_files(run)

    # experiments/wu2022/report.py on this run and a plain one: it loads each model as its run tested it
    baseline = train_here(tmp_path / "baseline", *CLS)
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    out = tmp_path / "wu_report"
    verdicts = load_experiment_report("wu2022").report(run.dir, baseline.dir, out, draws=3)
    full = json.loads((out / "report.json").read_text())
    assert full["accuracy"]["attendout_pruned"] == pytest.approx(100 * res["metrics"]["test/acc"], abs=1e-4)
    assert full["accuracy"]["baseline"] == pytest.approx(100 * baseline.results["metrics"]["test/acc"], abs=1e-4)
    assert full["accuracy"]["attendout_unpruned"] == pytest.approx(100 * lv[0]["metrics"]["test/acc"], abs=1e-4)
    assert full["random_draws"] == []  # the one layer is pruned: no other choice of as many layers exists
    assert verdicts["AttendOut prunes a share of the attention layers"]["verdict"] == "agree"
    assert [r["batch_size"] for r in full["speed"]] == [1, 16, 64]


@pytest.mark.slow
def test_attendout_under_ddp(tmp_path: Path) -> None:
    """Two CPU processes: A-Net and G-Net train outside DDP's reducer with their gradients averaged, every
    cycle checks that A-Net is identical on both ranks (the run stops otherwise), and the pruning decision
    comes from keep probabilities averaged over the whole validation set. The per-example "margin" reward
    with a drop bonus: its mean over both ranks' examples feeds the shared baseline."""
    ddp = ["hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2", "hardware.precision=32-true"]
    margin = ["pruner.reward=margin", "pruner.drop_bonus=0.05"]
    run = train(tmp_path / "run", *CLS, *ddp, "pruner=attendout", "pruner.every=3", "pruner.threshold=1.0", *margin)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed" and [x["stage"] for x in res["levels"]] == ["attendout", "pruned"]
    assert sum(res["attendout"]["rewards"].values()) == 20 // 3
    assert res["attendout"]["reward"] == "margin" and res["attendout"]["mean_reward_last_10"] is not None
    assert res["attendout"]["pruned_layers"] == ["enc.0.sa"]
    assert len((run.dir / "test.hyp.txt").read_text().split()) == 20  # every test example once
