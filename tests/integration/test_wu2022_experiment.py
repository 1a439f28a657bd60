"""experiments/wu2022/run.sh: both fine-tuning arms compose with the same steps and learning rate, and the
AttendOut arm's pruner gets the reward run.sh states (A-Net trains with the task's optimiser and schedule)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.utils import instantiate

from prunelab.cli.train import CONF_DIR
from prunelab.pruning.attendout import AttendOutPruner
from tests.integration.conftest import run_cfg

RUN_SH = Path(CONF_DIR).parent / "experiments" / "wu2022" / "run.sh"


def variables() -> dict[str, str]:
    text = RUN_SH.read_text()
    found = {k: v for k, v in re.findall(r"^(\w+)=\$\{\w+:-([^}]*)\}", text, re.M)}
    found.update(re.findall(r'^(AO)="([^"]*)"', text, re.M))
    return found


def test_both_arms_fine_tune_the_same_steps_at_the_same_lr() -> None:
    v = variables()
    start = ["ckpt=outputs/x/pretrained", f"trainer.max_steps={v['FT']}", f"task.lr={v['FT_LR']}"]
    attendout = run_cfg(["experiment=wu2022", "logger=csv", *shlex.split(v["AO"]), *start])
    baseline = run_cfg(["experiment=wu2022", "logger=csv", "pruner=none", *start])
    for cfg in (attendout, baseline):
        assert cfg.trainer.max_steps == int(v["FT"]) and cfg.task.lr == pytest.approx(float(v["FT_LR"]))
        assert cfg.model.enc_layers == 6 and cfg.hardware.precision == "bf16-mixed"
    pruner = instantiate(attendout.pruner)
    assert isinstance(pruner, AttendOutPruner)
    assert pruner.reward == "margin" and pruner.drop_bonus == pytest.approx(0.05)
    assert attendout.task == baseline.task  # A-Net trains with the task's recipe: both arms fine-tune alike
    # the "pretrained" stage is the from-scratch recipe: 2,000 steps at the task's own lr
    pretrained = run_cfg(["experiment=wu2022", "logger=csv", "pruner=none"])
    assert pretrained.trainer.max_steps == 2000 and pretrained.task.lr > 5 * float(v["FT_LR"])
