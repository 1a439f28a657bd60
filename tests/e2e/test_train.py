"""`python train.py` as a user runs it: short runs through config overrides, real outcomes checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.training.io import checkpoint_masks, mask_key
from tests.e2e.conftest import check_scores_from_files, read_hypotheses, train, train_here, write_corpus

REQUIRED_METRICS = {"val/bleu", "val/ter", "test/bleu", "test/ter"}


def test_default_pipeline_writes_results(tmp_path: Path, smoke: list[str]) -> None:
    run = train(tmp_path / "run", *smoke)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed"
    assert REQUIRED_METRICS <= set(res["metrics"])
    check_scores_from_files(run)  # test/bleu and test/ter are those of test.hyp.txt against the references
    assert res["sparsity"]["overall"] == 0.0
    assert res["params"]["remaining"] == res["params"]["total"] > res["params"]["prunable"] > 0
    assert res["wall_time_s"] > 0 and res["train"]["tokens_per_s"] > 0
    assert res["config"]["model"]["d_model"] == 32  # the resolved config travels with the results
    assert "nrefs:1" in res["bleu_signature"]
    assert len(read_hypotheses(run.dir)) == 20  # one line per test sentence
    assert (run.dir / "checkpoints" / "round_0" / "best.ckpt").exists()


def test_mp_reaches_exact_sparsity_and_leaves_biases(tmp_path: Path, smoke: list[str]) -> None:
    run = train_here(tmp_path / "run", *smoke, "pruner=mp", "sparsity=0.9", "pruner.frequency=2")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert abs(res["sparsity"]["overall"] - 0.9) < 0.005
    assert all(abs(s - 0.9) < 0.01 for s in res["sparsity"]["per_matrix"].values())
    mem = res["memory"]
    # CSC at 10% density: 8 bytes per kept weight + column pointers, vs 4 bytes per weight dense
    assert 0.2 < mem["prunable"]["csc_bytes"] / mem["prunable"]["dense_bytes"] < 0.3
    assert mem["model"]["dense_bytes"] - mem["prunable"]["dense_bytes"] == (
        mem["model"]["csc_bytes"] - mem["prunable"]["csc_bytes"]
    )
    # the tested checkpoint is the pruned one: its weights carry the masks, biases and norms are untouched
    state = torch.load(res["best_checkpoint"], weights_only=True)["state_dict"]
    masks = checkpoint_masks(state)
    assert masks
    for name, mask in masks.items():
        weight = state["model." + name]
        assert bool((weight[mask == 0] == 0).all())
        assert abs(float((mask == 0).float().mean()) - 0.9) < 0.01
    for key, _value in state.items():
        if key.startswith("model.") and (key.endswith(".bias") or "norm" in key):
            assert mask_key(key.removeprefix("model.")) not in state
    check_scores_from_files(run)


def test_multirun_writes_one_results_per_job(tmp_path: Path, smoke: list[str]) -> None:
    run = train(tmp_path / "sweep", *smoke, "pruner=none,mp", "sparsity=0.5", multirun=True)
    assert run.returncode == 0, run.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    import json

    by_pruner = {
        json.loads(p.read_text())["config"]["pruner"]["_target_"].split(".")[-1]: json.loads(p.read_text())
        for p in results
    }
    assert by_pruner["NoPruner"]["sparsity"]["overall"] == 0.0
    assert abs(by_pruner["MagnitudePruner"]["sparsity"]["overall"] - 0.5) < 0.005


def test_parallel_text_corpus(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    run = train_here(
        tmp_path / "run",
        "data=parallel_text",
        f"data.dir={corpus}",
        "data.src_lang=en",
        "data.tgt_lang=de",
        "data.vocab_size=40",
        "logger=csv",
        "model.d_model=32",
        "model.n_heads=2",
        "model.d_ff=64",
        "model.enc_layers=1",
        "model.dec_layers=1",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false",
        "task.warmup_steps=3",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed" and REQUIRED_METRICS <= set(res["metrics"])
    assert len((run.dir / "test.hyp.txt").read_text().splitlines()) == 8
    assert list(corpus.glob("spm.*.model")), "the subword model is cached next to the data"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pruner=nonexistent"], "nonexistent"),
        (["sparsity=1.2"], "sparsity must be in [0, 1), got 1.2"),
        (["pruner=mp", "sparsity=-0.1"], "sparsity must be in [0, 1), got -0.1"),
        (["data=parallel_text"], "data.dir must be set"),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, smoke: list[str], overrides: list[str], message: str) -> None:
    run = train(tmp_path / "run", *smoke, *overrides)
    assert run.returncode != 0
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    if (run.dir / "results.json").exists():
        assert run.results["status"] == "failed"


def _corpus_error(tmp_path: Path, mutate: str) -> tuple[int, str, Path]:
    corpus = write_corpus(tmp_path / "corpus")
    if mutate == "missing":
        (corpus / "valid.de").unlink()
    elif mutate == "misaligned":
        (corpus / "train.de").write_text("ONE\nTWO\n")
    elif mutate == "empty":
        (corpus / "train.en").write_text("")
        (corpus / "train.de").write_text("")
    run = train(tmp_path / "run", "data=parallel_text", f"data.dir={corpus}", "logger=csv", "trainer.max_steps=2")
    return run.returncode, run.stderr, corpus


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        ("missing", ["valid.de"]),
        ("misaligned", ["train.en", "train.de", "60", "2"]),
        ("empty", ["train.en", "empty"]),
    ],
)
def test_bad_data_is_one_clear_line(tmp_path: Path, mutate: str, expected: list[str]) -> None:
    code, stderr, corpus = _corpus_error(tmp_path, mutate)
    assert code != 0
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, stderr[-2000:]
    assert all(e in error_lines[0] for e in expected), error_lines[0]
    assert "Traceback" not in stderr
    assert not list(corpus.glob("spm.*.model")) or mutate != "misaligned"


def test_wandb_offline_run_holds_val_bleu_history(tmp_path: Path) -> None:
    from tests.e2e.wandb_log import history

    run = train(tmp_path / "run", "experiment=smoke", "logger=wandb")
    assert run.returncode == 0, run.stderr[-3000:]
    files = list((run.dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "one offline W&B run inside the run folder"
    h = history(files[0])
    # smoke: 20 steps validated every 10 -> 2 validations in fit, then the tested checkpoint's validation
    assert len(h["val/bleu"]) == 3
    assert h["val/bleu"][-1] == pytest.approx(run.results["metrics"]["val/bleu"], abs=1e-4)
    assert h["test/bleu"] == [pytest.approx(run.results["metrics"]["test/bleu"], abs=1e-4)]
    assert {"train/loss", "lr", "val/ter", "prune/sparsity"} <= set(h)


def test_resume_continues_from_last_checkpoint(tmp_path: Path, smoke: list[str]) -> None:
    import csv

    first = train(tmp_path / "run", *smoke, "trainer.max_steps=10", "trainer.val_check_interval=5")
    assert first.returncode == 0, first.stderr[-3000:]
    # as if killed during the round: the round-end marker is missing, last.ckpt (step 10) is there
    (first.dir / "checkpoints" / "round_0" / "round_end.ckpt").unlink()
    second = train(tmp_path / "run", *smoke, "trainer.max_steps=20", "trainer.val_check_interval=5")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in second.stderr + second.stdout
    steps = []
    for f in sorted((second.dir / "csv").glob("version_*/metrics.csv"))[-1:]:
        steps = [int(r["step"]) for r in csv.DictReader(f.open()) if r.get("train/loss")]
    # logged every 5 steps: a fresh start would log step index 4; a resume at step 10 logs 9 (its first
    # logging point, index 9 = the 10th step done), 14 and 19
    assert steps == [9, 14, 19]
    assert second.results["status"] == "completed"


def test_finished_run_is_not_retrained(tmp_path: Path, smoke: list[str]) -> None:
    first = train(tmp_path / "run", *smoke)
    assert first.returncode == 0, first.stderr[-3000:]
    # both runs share the folder: what the first wrote is read now, before the second can touch it
    before = first.results
    hyps = read_hypotheses(first.dir)
    ckpts = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(first.dir.glob("checkpoints/round_*/*.ckpt"))}
    assert ckpts
    again = train(tmp_path / "run", *smoke)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stderr + again.stdout
    assert again.results["metrics"] == before["metrics"]
    assert read_hypotheses(again.dir) == hyps
    # not retrained: no checkpoint was written again
    assert {
        p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(again.dir.glob("checkpoints/round_*/*.ckpt"))
    } == ckpts


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path: Path, smoke: list[str]) -> None:
    """One 2-round MP-SLT run on 2 gloo processes: gradual MP pruning steps inside round 0, the SLT mask and
    rewind at its end; the masks of both processes are compared after every pruning step."""
    import csv

    from prunelab.pruning.schedule import is_pruning_step, pruning_window

    run = train(
        tmp_path / "run",
        *smoke,
        "hardware=ddp",
        "hardware.accelerator=cpu",
        "hardware.devices=2",  # the preset's bf16-mixed and DDP strategy kept: only the accelerator is the CPU
        "pruner=mp_slt",
        "sparsity=0.6",
        "pruner.intermediate_sparsity=0.3",
        "pruner.levels=[0.6]",
        "pruner.frequency=3",
        "model.layerdrop=0.5",  # skipped sub-layers must not trip DDP's unused-parameter check
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed"
    assert (res["trainer"]["strategy"], res["trainer"]["precision"], res["trainer"]["devices"]) == (
        "DDPStrategy",
        "bf16-mixed",
        2,
    )
    assert [round(lv["sparsity"], 2) for lv in res["levels"]] == [0.3, 0.6]
    # every pruning step (the MP steps of round 0, the SLT mask at its end) was checked on both processes
    start, end = pruning_window(20, 0.2, 0.7)
    mp_steps = sum(is_pruning_step(step, start, end, 3) for step in range(1, 21))
    assert mp_steps >= 3 and res["ddp"] == {"world_size": 2, "mask_checks": mp_steps + 1}
    # written and logged once: one results line, one CSV log whose validations each appear once
    assert (run.stdout + run.stderr).count("results: ") == 1
    assert not list(run.dir.rglob("*.tmp"))
    (log,) = run.dir.glob("csv/version_*/metrics.csv")
    val_steps = [r["step"] for r in csv.DictReader(log.open()) if r.get("val/bleu")]
    assert val_steps == ["9", "19", "20"] * 2  # per round (steps restart): 2 validations in fit + the best's
    # every test sentence decoded exactly once although two ranks shared the work
    assert len((run.dir / "test.hyp.txt").read_text().splitlines()) == 20
