"""`hydra/launcher=slurm`: the SLURM preset maps the hardware group onto the job's GPUs, tasks and nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.integration.conftest import compose_cfg

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher",
    reason="hydra-submitit-launcher is not installed (pip install -e '.[cluster]')",
)


def test_slurm_preset_takes_devices_and_nodes_from_the_hardware_group(tmp_path: Path) -> None:
    cfg = compose_cfg(
        tmp_path,
        [
            "hydra/launcher=slurm",
            "hardware=ddp",
            "hardware.devices=4",
            "hardware.num_nodes=2",
            "hydra.launcher.partition=gpu",
        ],
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"], launcher["nodes"]) == (4, 4, 2)  # one task per GPU
    assert (launcher["partition"], launcher["timeout_min"]) == ("gpu", 1440)
    built = instantiate(cfg.hydra.launcher)  # the plugin accepts these settings
    assert built.params["tasks_per_node"] == 4 and built.params["partition"] == "gpu"
