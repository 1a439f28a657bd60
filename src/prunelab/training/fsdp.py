"""`hardware=fsdp`: fully sharded data parallel training with FSDP2 (torch's `fully_shard`), through Lightning's
ModelParallelStrategy (Lightning 2.6's way to FSDP2; its `FSDPStrategy` is FSDP1 and refuses any accelerator but a GPU).

The wrapping policy is one stack layer: every `prunelab.models.transformer.Layer` (EncoderLayer, DecoderLayer,
CausalLayer) is its own FSDP unit, all-gathered just before its forward and freed after it; the embeddings, final norms
and output head form the root unit. `activation_checkpointing=true` also recomputes each layer's activations in the
backward pass (torch's composable `checkpoint`, which keeps every parameter's name, so checkpoints and mask names stay
those of an unsharded run). Under `precision=bf16-mixed` the layers are gathered and computed in bf16 and gradients
reduced in fp32 (FSDP2's MixedPrecisionPolicy); the sharded parameters and the optimizer state stay fp32.

What stays as without sharding:
- checkpoints: one file, the full state dict gathered on rank 0 (`save_distributed_checkpoint=False`), with the
  parameter names of an unsharded run, so `ckpt=`, `load_run`, `prunelab export` and `prunelab heads|components` read
  it as any other;
- masks: whole on every rank (the pruner's buffers are not sharded). A pruning step gathers the whole weight matrices
  (one all-gather per step that prunes), so every rank ranks the same weights and computes the same masks, which the
  ranks then compare (pruning.base.check_ranks_agree); applying a mask touches only the rank's own rows of each matrix;
- a distillation teacher (`task.distill.teacher`) is sharded the same way, layer by layer, frozen.

What FSDP cannot do here: pruners that rewind weights or remove structure between rounds (the lottery-ticket family,
heads, components, structured, AttendOut, one-shot) act on whole tensors of the model; they are refused with one error
naming `hardware=ddp`. Mask pruners whose masks change inside a round (`pruner=none`, `mp`, `random`) train sharded.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.init import _materialize_distributed_module
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed._composable.contract import _get_registry
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from prunelab.distributed import local_part
from prunelab.errors import UserError
from prunelab.models.transformer import Layer
from prunelab.pruning.base import NoPruner
from prunelab.pruning.magnitude import MagnitudePruner

SHARDABLE = (NoPruner, MagnitudePruner)  # pruners whose every hook works on FSDP2's sharded parameters


def check_pruner(pruner: nn.Module) -> None:
    """One UserError for a pruner that cannot train on sharded weights."""
    if not isinstance(pruner, SHARDABLE):
        raise UserError(
            f"hardware=fsdp trains with pruner=none, mp or random; {type(pruner).__name__} rewinds weights or removes "
            "structure between rounds, which prunelab does only on whole tensors (use hardware=ddp)"
        )


def layers_of(model: nn.Module) -> list[nn.Module]:
    """The FSDP units below the root: every stack layer of a prunelab model (encoder, decoder or causal layer)."""
    return [m for m in model.modules() if isinstance(m, Layer)]


def sharding_report(model: nn.Module) -> dict[str, Any]:
    """How `model` is sharded, read from its modules: FSDP units, layers with activation checkpointing, and the
    fraction of its parameters this rank holds (1/world size for evenly split rows)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    return {
        "units": sum(isinstance(m, FSDPModule) for m in model.modules()),
        "checkpointed_layers": sum("checkpoint" in (_get_registry(m) or {}) for m in model.modules()),
        "local_fraction": sum(local_part(p).numel() for p in params) / total if total else 0.0,
    }


def shard_model(
    model: nn.Module,
    mesh: Any,
    mixed_precision: Any = None,
    reshard_after_forward: bool = True,
    activation_checkpointing: bool = False,
    frozen: bool = False,
) -> bool:
    """fully_shard every stack layer of `model`, then `model` itself (the root: embeddings, final norms, head).
    `frozen` (a distillation teacher): the root is freed after every forward too (a trained root stays gathered from
    its forward to its backward, which a frozen model never runs). Returns False when `model` was sharded already (a
    later stage of the same run: validate, test, the next round)."""
    if isinstance(model, FSDPModule):
        return False
    kwargs: dict[str, Any] = {"mesh": mesh}
    if mixed_precision is not None:
        kwargs["mp_policy"] = mixed_precision
    for layer in layers_of(model):
        if activation_checkpointing:
            checkpoint(layer)  # before fully_shard (torch's documented order); names and hooks stay the layer's
        fully_shard(layer, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, reshard_after_forward=True if frozen else None, **kwargs)  # None: torch's root default
    return True


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with FSDP2 over all processes (no tensor parallelism), applied to prunelab's
    task by itself: the task's `model` (and a distillation teacher) sharded per stack layer, the pruner re-attached
    to the sharded parameters, checkpoints written whole by rank 0. Built by `conf/hardware/fsdp.yaml`."""

    def __init__(
        self,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        shard_teacher: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,  # one file, read by ckpt=, load_run, export and the studies
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward
        self.shard_teacher = shard_teacher
        # what was sharded, filled in at the first setup (results.json `trainer.fsdp`, by training.rounds)
        self.report: dict[str, Any] = {}

    def setup_environment(self) -> None:
        # every process shards the model (one data-parallel dimension of world size, tensor parallelism 1)
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def mixed_precision_policy(self) -> Any:
        """bf16-mixed: gather and compute in bf16, reduce gradients in fp32; else None (fp32 throughout)."""
        if self.precision_plugin.precision != "bf16-mixed":
            return None
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)

    def shard(self, task: pl.LightningModule) -> None:
        """Shard the task's model (and teacher) once; the pruner's masks then pair with the sharded parameters."""
        check_pruner(task.pruner)
        mesh = self.device_mesh["data_parallel"]
        policy = self.mixed_precision_policy()
        if shard_model(task.model, mesh, policy, self.reshard_after_forward, self.activation_checkpointing):
            task.pruner.attach(task.model)  # the same names, now DTensor parameters; the masks are kept
        distiller = getattr(task, "distiller", None)
        if distiller is not None and self.shard_teacher:
            # the teacher is frozen: its layers are gathered for its forward and freed after it, as the student's
            shard_model(distiller.teacher, mesh, policy, reshard_after_forward=True, frozen=True)
        self.report.update(
            world_size=self.world_size,
            mixed_precision="bf16 compute, fp32 gradient reduction" if policy is not None else None,
            reshard_after_forward=self.reshard_after_forward,
            model=sharding_report(task.model),
            teacher=sharding_report(distiller.teacher) if distiller is not None else None,
        )

    def setup(self, trainer: pl.Trainer) -> None:
        """ModelParallelStrategy.setup, with prunelab's sharding in place of the task's `configure_model` hook."""
        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        self.shard(self.lightning_module)
        _materialize_distributed_module(self.model, self.root_device)
        self.model = self.precision_plugin.convert_module(self.model)
        self.model_to_device()  # the pruner's masks (whole, on every rank) follow the model
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)

    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning loads the weights into the sharded model and drops the state_dict from what the hooks see; the
        task's on_load_checkpoint reads it (removed heads, masks), so it is given back (memory-mapped, not copied)."""
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        path = Path(checkpoint_path)
        if "state_dict" not in checkpoint and path.is_file():
            checkpoint["state_dict"] = torch.load(path, mmap=True, map_location="cpu", weights_only=True)["state_dict"]
        return checkpoint

    # the root unit (embeddings, head) is gathered for a whole evaluation: decoding calls the model's methods
    # (encode, decode steps) rather than its forward, which is where FSDP2 gathers it during training
    def _gather_root(self) -> None:
        model = getattr(self.lightning_module, "model", None)
        if isinstance(model, FSDPModule):
            model.unshard()

    def _free_root(self) -> None:
        model = getattr(self.lightning_module, "model", None)
        if isinstance(model, FSDPModule):
            model.reshard()

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._gather_root()

    def on_validation_end(self) -> None:
        self._free_root()
        super().on_validation_end()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._gather_root()

    def on_test_end(self) -> None:
        self._free_root()
        super().on_test_end()


def check_hardware(strategy: Any, pruner: nn.Module) -> None:
    """Before any process starts: with hardware=fsdp (`strategy`, as the Trainer will get it) a pruner that cannot
    train sharded is one UserError."""
    if isinstance(strategy, FSDP2Strategy):
        check_pruner(pruner)
