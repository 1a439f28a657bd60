"""Config schemas registered with Hydra before composition.

`trainer:` is typed by lightning.Trainer's own signature: every Trainer argument can be set as `trainer.X=...`
(no `+`) and an unknown one is an error when the config is composed. Each starts at Lightning's own default,
except the hardware arguments (accelerator, devices, strategy, precision, num_nodes: null, i.e. the hardware
preset's) and the ones prunelab fixes (training.build.TRAINER_FIXED).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import lightning as L
from hydra.core.config_store import ConfigStore

HARDWARE_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes")  # from hardware/ unless set
TRAINER_FIXED: dict[str, Any] = {"use_distributed_sampler": False}  # our token batch samplers shard themselves


def _default(name: str, param: inspect.Parameter) -> Any:
    if name in HARDWARE_KEYS:
        return None
    return TRAINER_FIXED.get(name, param.default)


def trainer_schema() -> type:
    """A dataclass with one field per lightning.Trainer argument and its default."""
    params = [(n, p) for n, p in inspect.signature(L.Trainer.__init__).parameters.items() if n != "self"]
    fields = [(n, Any, dataclasses.field(default=_default(n, p))) for n, p in params]
    return dataclasses.make_dataclass("TrainerConfig", fields)


TrainerConfig = trainer_schema()


def register() -> None:
    """`train_schema`, first in conf/train.yaml's defaults: only `trainer:` is typed; the rest stays open."""
    ConfigStore.instance().store(name="train_schema", node={"trainer": TrainerConfig})


register()
