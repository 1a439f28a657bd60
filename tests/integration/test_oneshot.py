"""`pruner=oneshot` on runs prunelab trained (translation and classification), in-process: the dense level is the
start run's own score, the pruned level has the asked sparsity (exact N:M where asked), SparseGPT's weight update
is on or off as asked, recovery keeps the one-shot mask, results.json says how the pruning was calibrated, and a
run without trained weights is one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.training import load_run, train
from prunelab.training.io import checkpoint_masks
from tests.integration.conftest import run_cfg

pytestmark = pytest.mark.xdist_group("oneshot")  # the module's dense runs are trained once, on one worker
SMOKE = ["experiment=smoke", "logger=none", "trainer.max_steps=30", "data.train_size=300"]
NMT = ["task.beam_size=1"]
CLS = ["model=classifier_tiny", "data=synthetic_classification", "model.d_model=32", "model.d_ff=64"]


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("oneshot")
    return {
        "translation": (root / "nmt", train(run_cfg([*SMOKE, *NMT]), root / "nmt")),
        "classification": (root / "cls", train(run_cfg([*SMOKE, *CLS]), root / "cls")),
    }


def oneshot(dense_dir: Path, out: Path, *overrides: str, kind: str = "translation") -> dict:
    extra = CLS if kind == "classification" else NMT
    args = [*SMOKE, *extra, "pruner=oneshot", "sparsity=0.5", f"ckpt={dense_dir}", "trainer.max_steps=0", *overrides]
    return train(run_cfg(args), out, choices={"pruner": "oneshot"})


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in load_run(run_dir).model.state_dict().items()}


def test_sparsegpt_on_a_translation_run(dense: dict, tmp_path: Path) -> None:
    start_dir, start = dense["translation"]
    res = oneshot(start_dir, tmp_path / "sgpt", "pruner.calibration.n=40", "pruner.calibration.seed=3")
    d, pruned = res["levels"]
    assert (d["stage"], d["round"], pruned["stage"], pruned["round"]) == ("dense", 0, "oneshot", 1)
    assert d["metrics"]["test/bleu"] == pytest.approx(start["metrics"]["test/bleu"], abs=1e-6)  # the same weights
    assert pruned["time"]["steps"] == 0 and res["metrics"] == pruned["metrics"]
    per_matrix = res["sparsity"]["per_matrix"]
    assert per_matrix and all(abs(s - 0.5) <= 1 / 64 for s in per_matrix.values())  # block-wise choice: near 0.5
    report = res["oneshot"]
    assert (report["method"], report["pattern"], report["update"]) == ("sparsegpt", "unstructured", True)
    cal = report["calibration"]
    assert (cal["examples"], cal["seed"], cal["split"]) == (40, 3, "train") and cal["tokens"] > 40
    assert report["memory"]["model_bytes"] > 0 and report["memory"]["peak_over_model"] >= 1.0
    # the kept weights moved (OBS updates); with update=false they are the start run's own
    before, after = weights(start_dir), weights(tmp_path / "sgpt")
    kept = after["enc.0.ff.fc1.weight"] != 0
    assert not torch.equal(after["enc.0.ff.fc1.weight"][kept], before["enc.0.ff.fc1.weight"][kept])
    res = oneshot(start_dir, tmp_path / "mask_only", "pruner.calibration.n=40", "pruner.update=false")
    plain = weights(tmp_path / "mask_only")
    for k in per_matrix:
        w = plain[k]
        torch.testing.assert_close(w, before[k] * (w != 0), rtol=0, atol=0)


def test_recovery_keeps_the_one_shot_mask(dense: dict, tmp_path: Path) -> None:
    start_dir, _ = dense["translation"]
    args = ["pruner.method=wanda", "pruner.calibration.n=24"]
    oneshot(start_dir, tmp_path / "zero", *args)
    res = oneshot(start_dir, tmp_path / "recovered", *args, "trainer.max_steps=6", "trainer.val_check_interval=3")
    assert res["levels"][1]["time"]["steps"] == 6
    zero, recovered = weights(tmp_path / "zero"), weights(tmp_path / "recovered")
    masks = checkpoint_masks(torch.load(res["best_checkpoint"], weights_only=True)["state_dict"])
    assert masks
    for k, m in masks.items():
        assert torch.equal(recovered[k] == 0, zero[k] == 0)  # the same weights removed, none grown back
        assert torch.equal(m.bool(), zero[k] != 0)
    assert any(not torch.equal(recovered[k], zero[k]) for k in masks)  # and the kept ones trained


def test_wanda_two_four_on_a_classifier(dense: dict, tmp_path: Path) -> None:
    start_dir, start = dense["classification"]
    texts = tmp_path / "calibration.txt"  # calibrated on a text file instead of the run's training split
    texts.write_text("".join(f"{w} is not {v}\n" for w in ("a", "the", "some") for v in ("x", "y", "z")))
    res = oneshot(
        start_dir,
        tmp_path / "w24",
        "pruner.method=wanda",
        "pruner.pattern=2:4",
        f"pruner.calibration.file={texts}",
        kind="classification",
    )
    assert res["oneshot"]["calibration"]["source"] == str(texts) and res["oneshot"]["calibration"]["examples"] == 9
    assert res["levels"][0]["metrics"]["test/acc"] == pytest.approx(start["metrics"]["test/acc"], abs=1e-6)
    w = weights(tmp_path / "w24")
    names = list(res["sparsity"]["per_matrix"])
    assert "head.weight" in names and "enc.0.ff.fc2.weight" in names  # the head too: every prunable matrix
    for k in names:
        groups = (w[k] != 0).view(w[k].shape[0], -1, 4).sum(-1)
        assert bool((groups <= 2).all()), k  # at most 2 of every 4 consecutive inputs kept
    assert res["oneshot"]["pattern"] == "2:4" and res["sparsity"]["overall"] == pytest.approx(0.5)


def test_oneshot_needs_a_trained_model_and_a_matching_sparsity(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"pruner=oneshot prunes a trained model: start from a run \(ckpt=RUN_DIR\)"):
        train(run_cfg([*SMOKE, *NMT, "pruner=oneshot", "sparsity=0.5"]), tmp_path / "a", choices={"pruner": "oneshot"})
    assert not (tmp_path / "a" / "checkpoints").exists()  # nothing trained or written before the error
    with pytest.raises(UserError, match=r"pruner.pattern=2:4 keeps 2 of every 4 weights: sparsity=0.5, not 0.7"):
        train(run_cfg([*SMOKE, *NMT, "pruner=oneshot", "pruner.pattern=2:4", "sparsity=0.7"]), tmp_path / "b")
