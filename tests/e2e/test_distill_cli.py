"""`python train.py ckpt=RUN pruner=heads pruner.finetune_steps=N task.distill.teacher=RUN`: a head-pruned model
recovered by distillation from the run it was pruned from (prunelab.tasks.distill), against the same recovery
without a teacher."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.e2e.conftest import Run, train_here

pytestmark = pytest.mark.xdist_group("distill_cli")  # one trained teacher for the module's tests

SMOKE = ["experiment=smoke", "logger=csv", "task.beam_size=1"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The teacher: a dense smoke run (1+1 layers, 2 heads, 20 steps)."""
    run = train_here(tmp_path_factory.mktemp("distill") / "dense", *SMOKE)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def heads_recovery(run_dir: Path, dense: Run, *extra: str) -> Run:
    """Half the heads of `dense` removed, then 8 fine-tuning steps."""
    args = ["pruner=heads", "sparsity=0.5", "pruner.finetune_steps=8", "pruner.importance_batches=2"]
    run = train_here(run_dir, *SMOKE, *args, f"ckpt={dense.dir}", *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def model_state(checkpoint: str) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def logged(run: Run, key: str) -> list[float]:
    """Every value of `key` the run's CSV logger wrote."""
    (path,) = (run.dir / "csv").glob("version_*/metrics.csv")
    with path.open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_distillation_recovers_a_head_pruned_model(dense: Run, tmp_path: Path) -> None:
    kd = heads_recovery(tmp_path / "kd", dense, f"task.distill.teacher={dense.dir}", "task.distill.hidden_weight=0.5")
    plain = heads_recovery(tmp_path / "plain", dense)  # the same seed, data and pruning; no teacher

    res = kd.results
    assert res["status"] == "completed"
    assert res["distillation"] == {"teacher": str(dense.dir), "alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.5}
    assert res["config"]["task"]["distill"]["teacher"] == str(dense.dir)
    assert "distillation" not in plain.results and "distillation" not in dense.results
    assert [lv["stage"] for lv in res["levels"]] == ["dense", "pruned", "fine-tuned"]
    assert all(math.isfinite(v) for v in res["metrics"].values()) and "test/bleu" in res["metrics"]

    # the KD and hidden-state terms were computed in the fine-tuning steps, and only there (no key in the teacher's)
    kd_values, hidden = logged(kd, "train/kd_loss"), logged(kd, "train/hidden_loss")
    assert kd_values and hidden and all(math.isfinite(v) and v > 0 for v in kd_values + hidden)
    assert logged(plain, "train/kd_loss") == [] and logged(plain, "train/loss")

    # both runs pruned the same heads from the same weights; distillation changed what fine-tuning did
    assert res["heads"]["removed"] == plain.results["heads"]["removed"]
    assert res["levels"][1]["metrics"] == plain.results["levels"][1]["metrics"]
    a, b = model_state(res["best_checkpoint"]), model_state(plain.results["best_checkpoint"])
    assert a.keys() == b.keys()
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    # the teacher is not in the checkpoint: its keys are the pruned student's alone
    assert not any("teacher" in k for k in torch.load(res["best_checkpoint"], weights_only=True)["state_dict"])

    # a distilled run loads as any other (its config has task.distill.teacher set)
    from prunelab.training import load_run

    loaded = load_run(kd.dir)
    assert all(torch.equal(v, a["model." + k]) for k, v in loaded.model.state_dict().items() if "model." + k in a)


def test_a_run_recorded_before_distillation_is_a_teacher(dense: Run, tmp_path: Path) -> None:
    """Older runs' configs have no task.distill: load_run rebuilds them, and they serve as teachers."""
    from prunelab.training import load_run
    from prunelab.training.task import build_distiller

    results = dict(dense.results)
    config = json.loads(json.dumps(results["config"]))
    del config["task"]["distill"]
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "results.json").write_text(json.dumps({**results, "config": config}))  # its checkpoints stay where they are
    assert load_run(old).task_class.__name__ == "TranslationTask"
    distiller = build_distiller({"teacher": str(old), "alpha": 1.0})
    assert distiller is not None and not distiller.teacher.training
    want = load_run(dense.dir).model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in distiller.teacher.state_dict().items())


def test_missing_teacher_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    run = train_here(tmp_path / "run", *SMOKE, f"task.distill.teacher={missing}")
    assert run.returncode == 2
    assert re.fullmatch(
        rf"error: task.distill.teacher={re.escape(str(missing))}: no such run folder or checkpoint\n", run.stderr
    )
    assert run.results["status"] == "failed"


CLS = ["model=classifier_tiny", "data=synthetic_classification", "experiment=smoke", "logger=csv"]


def test_one_shot_pruned_classifier_recovers_by_distillation(dense: Run, tmp_path: Path) -> None:
    """Magnitude one-shot pruning of a trained classifier, then 6 steps of recovery with the mask fixed, all KD
    (alpha = 1): the mask stays, the settings are recorded; a translation run cannot teach it."""
    teacher = train_here(tmp_path / "teacher", *CLS)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    oneshot = [
        "pruner=oneshot",
        "pruner.method=magnitude",
        "sparsity=0.5",
        "trainer.max_steps=6",
        f"ckpt={teacher.dir}",
    ]
    run = train_here(tmp_path / "kd", *CLS, *oneshot, f"task.distill.teacher={teacher.dir}", "task.distill.alpha=1.0")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["distillation"] == {"teacher": str(teacher.dir), "alpha": 1.0, "temperature": 2.0, "hidden_weight": 0.0}
    assert res["sparsity"]["overall"] == pytest.approx(0.5, abs=0.01)
    assert all(math.isfinite(v) for v in res["metrics"].values()) and "test/acc" in res["metrics"]
    kd_values = logged(run, "train/kd_loss")
    assert kd_values and all(math.isfinite(v) and v >= 0 for v in kd_values)
    assert logged(run, "train/hidden_loss") == []  # hidden_weight = 0: not computed, not logged
    # alpha = 1: the loss trained on is the KD term alone
    with (run.dir / "csv").glob("version_*/metrics.csv").__next__().open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/kd_loss")]
    assert all(float(r["train/loss"]) == pytest.approx(float(r["train/kd_loss"]), rel=1e-6) for r in rows)

    wrong = train_here(tmp_path / "wrong", *CLS, f"task.distill.teacher={dense.dir}")
    assert wrong.returncode == 2
    assert wrong.stderr == (
        f"error: task.distill.teacher={dense.dir}: a translation model cannot teach a classification model "
        "(the teacher must be trained on the same data)\n"
    )


def test_lottery_ticket_rounds_distil_from_the_dense_run(dense: Run, tmp_path: Path) -> None:
    """Distillation after a lottery-ticket pruner: every round (dense, then the ticket at 50%) trains against the
    teacher; the ticket keeps its sparsity."""
    args = ["pruner=slt", "sparsity=0.5", "pruner.levels=[0.5]", "trainer.max_steps=6", "trainer.val_check_interval=3"]
    run = train_here(tmp_path / "slt", *SMOKE, *args, f"task.distill.teacher={dense.dir}")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["distillation"]["teacher"] == str(dense.dir)
    assert [lv["sparsity"] for lv in res["levels"]] == [0.0, pytest.approx(0.5, abs=0.01)]
    (path,) = (run.dir / "csv").glob("version_*/metrics.csv")
    level, levels_with_kd = None, set()
    with path.open() as f:  # KD logged in both rounds' training steps (each round logs its sparsity first)
        for row in csv.DictReader(f):
            level = float(row["prune/sparsity"]) if row.get("prune/sparsity") else level
            if row.get("train/kd_loss"):
                levels_with_kd.add(level)
    assert levels_with_kd == {0.0, 0.5}
