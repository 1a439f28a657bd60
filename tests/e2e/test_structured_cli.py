"""`python train.py pruner=structured ckpt=RUN`: width (heads + neurons) and depth (layers) removal for real on a
trained NMT model and a classifier; the pruned run reports what it removed and what the model costs, reloads
through load_run (weights_only checkpoints) to the tested model's outputs, and exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.models.addressing import set_gate
from prunelab.models.cost import cost
from prunelab.pruning.structured import removed_layers
from prunelab.training import load_run
from tests.e2e.conftest import assert_export_round_trip, train_here


def test_width_pruning_of_a_trained_translation_model(tmp_path: Path, smoke: list[str]) -> None:
    dense = train_here(tmp_path / "dense", *smoke)
    assert dense.returncode == 0, dense.stderr[-3000:]
    args = [*smoke, "pruner=structured", "sparsity=0.2", "pruner.finetune_steps=4", f"ckpt={dense.dir}"]
    run = train_here(tmp_path / "width", *args, "pruner.importance_batches=2")
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert [lv["stage"] for lv in res["levels"]] == ["dense", "pruned", "fine-tuned"]
    assert res["levels"][0]["metrics"]["test/bleu"] == pytest.approx(dense.results["metrics"]["test/bleu"], abs=1e-6)
    s = res["structured"]
    assert s["structure"] == "width" and s["budget"] == "params" and s["criterion"] == "activation"
    assert s["params"]["before"] == dense.results["params"]["total"]
    assert s["params_removed_fraction"] == pytest.approx(0.2, abs=0.04)
    assert s["flops_removed_fraction"] > 0
    # the model the run tested is the smaller one: rebuilt from its checkpoint, it has the report's cost
    model = load_run(run.dir).model
    assert cost(model, s["flops_context"])["params"] == s["params"]["after"] == res["params"]["total"]
    widths = {n: w for n, w in s["widths"].items() if n.endswith(".ff")}
    assert len(set(widths.values())) == 1 and next(iter(widths.values())) < model.cfg.d_ff  # per layer: uniform
    assert_export_round_trip(run.dir)


def test_depth_pruning_of_a_trained_classifier(tmp_path: Path, smoke: list[str]) -> None:
    data = ["model=classifier_tiny", "data=synthetic_classification", "model.enc_layers=3"]
    dense = train_here(tmp_path / "dense", *smoke, *data)
    assert dense.returncode == 0, dense.stderr[-3000:]
    args = [*smoke, *data, "pruner=structured", "pruner.structure=depth", "pruner.criterion=block_influence"]
    run = train_here(tmp_path / "depth", *args, "sparsity=0.25", "pruner.importance_batches=2", f"ckpt={dense.dir}")
    assert run.returncode == 0, run.stderr[-3000:]
    s = run.results["structured"]
    assert len(s["layers_removed"]) == 1
    model = load_run(run.dir).model
    assert removed_layers(model) == s["layers_removed"]
    # no fine-tuning: the pruned model is the dense one with that layer's sub-layers gated off (pre-norm: adding 0)
    masked = load_run(dense.dir).model
    layer = s["layers_removed"][0]
    for kind in ("sa", "ff"):
        set_gate(masked, f"{layer}.{kind}", 0.0)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, model.cfg.vocab_size, (2, 7), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(src), masked(src))
        assert not torch.allclose(model(src), load_run(dense.dir).model(src))
    assert_export_round_trip(run.dir)


def test_too_much_width_is_one_clear_error(tmp_path: Path, smoke: list[str]) -> None:
    run = train_here(tmp_path / "run", *smoke, "pruner=structured", "sparsity=0.95", "pruner.units=[heads]")
    assert run.returncode == 2
    assert "can remove at most" in run.stderr
