from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict, read_write

from prunelab.cli.train import CONF_DIR


def compose_cfg(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The config `python train.py OVERRIDES` composes, with the run folder set to tmp_path."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)  # lets ${hydra:runtime.output_dir} resolve as in a real run
    return cfg


def run_cfg(overrides: list[str]) -> DictConfig:
    """The run config (no `hydra:` node) that `python train.py OVERRIDES` hands to `train`."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))
