"""What `sparsity` counts differs by pruner (weights, heads or K/V groups, components or layers, the model's cost);
every pruner says it (`sparsity_means`) and results.json records it as `sparsity.means`."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from prunelab.training import train
from tests.integration.conftest import run_cfg


def means(*overrides: str) -> str:
    return instantiate(run_cfg(["sparsity=0.5", *overrides]).pruner).sparsity_means


@pytest.mark.parametrize(
    ("overrides", "says", "never"),
    [
        (["pruner=mp"], ["prunable weights", "each weight matrix"], ["embeddings", "heads"]),
        (["pruner=mp", "pruner.scope=global", "pruner.prune_embeddings=true"], ["embeddings", "ranked together"], []),
        (["pruner=oneshot"], ["prunable weights"], ["heads"]),
        (["pruner=slt_mp"], ["prunable weights"], []),
        (["pruner=heads"], ["attention heads"], ["K/V"]),
        (["pruner=heads", "pruner.unit=group"], ["K/V groups"], []),
        (["pruner=components"], ["components (sub-layers)"], ["layers chosen"]),
        (["pruner=components", "pruner.granularity=layer"], ["the layers"], ["sub-layers"]),
        (["pruner=structured"], ["parameters"], ["FLOPs"]),
        (
            ["pruner=structured", "pruner.budget=flops", "pruner.structure=depth", "pruner.criterion=block_influence"],
            ["FLOPs per token", "depth"],
            [],
        ),
        (["pruner=none"], ["not read"], []),
        (["pruner=attendout"], ["not read", "threshold"], []),
    ],
)
def test_each_pruner_says_what_sparsity_counts(overrides: list[str], says: list[str], never: list[str]) -> None:
    text = means(*overrides)
    assert all(s in text for s in says), text
    assert not any(s in text for s in never), text


def test_results_json_records_what_sparsity_meant(tmp_path: Path) -> None:
    """A heads run from a trained dense run: results.json records the heads pruner's meaning beside the fraction of
    heads actually gone; a weight-mask run records its own."""
    dense = [
        "experiment=smoke",
        "logger=csv",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "task.beam_size=1",
    ]
    mp = train(run_cfg([*dense, "pruner=mp", "sparsity=0.5"]), tmp_path / "mp", choices={"pruner": "mp"})
    assert mp["sparsity"]["means"].startswith("the fraction of the prunable weights")
    run = [*dense, "pruner=heads", "sparsity=0.5", "pruner.finetune_steps=2", f"ckpt={tmp_path / 'mp'}"]
    res = train(run_cfg(run), tmp_path / "heads", choices={"pruner": "heads"})
    assert res["sparsity"]["means"] == "the fraction of the attention heads removed"
    assert res["sparsity"]["overall"] == pytest.approx(len(res["heads"]["removed"]) / res["heads"]["total"])
    assert res["sparsity"]["overall"] == pytest.approx(0.5)
