"""Every `conf/pruner/*.yaml` end to end, on the kind of data it prunes (a pruner that prunes only some kinds declares
them, `tasks`; the others run on translation data), through `train(cfg)` in-process: a new pruner (one class + one
YAML) is tested here without editing a list."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hydra.utils import get_class

from prunelab.cli.train import CONF_DIR
from prunelab.training import train
from tests.integration.conftest import run_cfg

PRUNERS = sorted(p.stem for p in (Path(CONF_DIR) / "pruner").glob("*.yaml"))
DATA = {
    "translation": ["task.beam_size=1"],
    "classification": ["model=classifier_tiny", "data=synthetic_classification"],
}
SPARSITY = 0.3
# kept short where a pruner has them: its own step counts, and one pruned level for iterative methods
FAST = {"finetune_steps": 3, "every": 2, "levels": f"[{SPARSITY}]"}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", PRUNERS)
def test_pruner_runs_end_to_end(tmp_path: Path, name: str, precision: str) -> None:
    """Every pruner in fp32 and under bf16-mixed (CPU autocast: bf16 matmuls, the gates, masks, scores and
    optimizer state in fp32): the run completes, every level is tested with finite scores."""
    base = [
        "experiment=smoke",
        "logger=csv",
        f"pruner={name}",
        f"sparsity={SPARSITY}",
        f"trainer.precision={precision}",
    ]
    base += ["trainer.max_steps=6", "trainer.val_check_interval=3", "data.train_size=200"]
    cfg = run_cfg(base)
    kind = (get_class(cfg.pruner._target_).tasks or ("translation",))[0]  # None: any kind
    extra = [f"pruner.{k}={v}" for k, v in FAST.items() if k in cfg.pruner]
    if get_class(cfg.pruner._target_).needs_trained_model:  # it prunes a trained model: train one first
        dense = [o for o in base if not o.startswith(("pruner=", "sparsity="))]
        train(run_cfg([*dense, *DATA[kind]]), tmp_path / "dense")
        extra += [f"ckpt={tmp_path / 'dense'}", "pruner.calibration.n=16"]
    res = train(run_cfg([*base, *DATA[kind], *extra]), tmp_path, choices={"pruner": name})
    assert res["status"] == "completed" and res["trainer"]["precision"] == precision
    key = res["score"]["key"]
    assert res["levels"] and all(f"test/{key}" in lv["metrics"] for lv in res["levels"])
    assert all(
        math.isfinite(lv["metrics"][f"test/{key}"]) and math.isfinite(lv["metrics"]["test/loss"])
        for lv in res["levels"]
    )
    assert res["metrics"] == res["levels"][-1]["metrics"]
    if "sparsity" in cfg.pruner:  # a level reaches the target (weights, heads or components removed; a method
        # may end on a baseline level, e.g. components' "continue")
        reached = max(lv["sparsity"] for lv in res["levels"])
        if reached == 0 and "components" in res:  # components' rewind mode resets what it chose, removes nothing
            chosen, scored = res["components"]["chosen"], res["components"]["contribution"]
            assert len(chosen) == round(SPARSITY * len(scored)) > 0
        else:
            assert reached == pytest.approx(SPARSITY, abs=0.15) and reached > 0
    assert (tmp_path / "test.hyp.txt").read_text().count("\n") == len(
        (tmp_path / "checkpoints" / f"round_{res['levels'][-1]['round']}" / "test.hyp.txt").read_text().splitlines()
    )
