"""One-shot post-training pruning (`pruner=oneshot`): a trained model pruned once, matrix by matrix, from a small
calibration set, without retraining: magnitude, Wanda (Sun et al. 2023) or SparseGPT (Frantar & Alistarh 2023),
unstructured or N:M (pruning.solvers), the layers in order (pruning.calibration).

Round 0 scores the weights the run starts from (`ckpt=RUN` or an imported checkpoint; stage "dense"). Round 1 prunes
them at its start and trains `trainer.max_steps` steps with the mask fixed: `trainer.max_steps=0` scores the pruned
model as it is, N > 0 is one-shot pruning plus N steps of recovery in one run. results.json's `oneshot` says how:
method, pattern, calibration (examples, tokens, seed), time and peak memory of the pruning.

`stream=True` (pruning.stream): the weights are read from the imported checkpoint's safetensors files one layer at
a time, each layer pruned and written to a pruned Hugging Face folder (`stream_dir`, or a temporary one) and let go,
so that the pruning never holds the whole model: the resident model's weights and masks are let go for it and read
back from that folder after, whole, for the evaluation (Lightning's validation and test, and the checkpoints, need
the whole model). The same masks and weights, bit for bit, as the in-memory pruning.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from prunelab.data.batching import to_device
from prunelab.errors import UserError
from prunelab.pruning.base import MaskPruner, check_ranks_agree, mask_buffer
from prunelab.pruning.calibration import CalibrationSet, calibration_set, prune_sequentially
from prunelab.pruning.memory import free_bytes, peak_memory, release_memory
from prunelab.pruning.solvers import (
    InputStats,
    check_groups,
    check_sparsity,
    parse_pattern,
    removal_mask,
    sparsegpt,
    wanda_scores,
)
from prunelab.pruning.stream import load_streamed, stream_prune, streamable

log = logging.getLogger("prunelab")
METHODS = ("magnitude", "wanda", "sparsegpt")
# examples of the run's `split` (a seeded sample), stopping at `max_tokens` tokens in all when set
# (or of a text `file`, or a `datasets` data set's split); see conf/pruner/oneshot.yaml
CALIBRATION = MappingProxyType(
    {
        "n": 128,
        "max_tokens": None,
        "seed": 0,
        "split": "train",
        "batch_tokens": 512,
        "file": None,
        "dataset": None,
        "dataset_config": None,
        "dataset_split": "train",
        "columns": None,
    }
)


class OneShotPruner(MaskPruner):
    rounds = 2
    needs_trained_model = True

    def __init__(
        self,
        sparsity: float,
        method: str = "sparsegpt",
        pattern: str = "unstructured",
        update: bool = True,
        calibration: Mapping[str, Any] = CALIBRATION,
        block: int = 128,
        damp: float = 0.01,
        prune_embeddings: bool = False,
        device: str = "auto",
        stream: bool | str = "auto",
        stream_dir: str | None = None,
    ):
        super().__init__(sparsity=sparsity, prune_embeddings=prune_embeddings)
        if method not in METHODS:
            raise UserError(f"pruner.method={method!r}: one of {', '.join(METHODS)}")
        self.method = method
        self.pattern = parse_pattern(pattern)
        check_sparsity(self.pattern, sparsity)
        if not update and method != "sparsegpt":
            raise UserError(f"pruner.update=false is SparseGPT's (its mask without the weight update), not {method}'s")
        if block < 1 or not 0.0 <= damp:
            raise UserError(f"pruner.block must be >= 1 and pruner.damp >= 0, got {block} and {damp}")
        self.update, self.block, self.damp, self.device = update, block, damp, device
        self.calibration = {**CALIBRATION, **calibration}
        unknown = sorted(set(self.calibration) - set(CALIBRATION))
        if unknown:
            raise UserError(f"pruner.calibration.{unknown[0]} is not a setting ({', '.join(CALIBRATION)})")
        if not (isinstance(stream, bool) or stream == "auto"):  # not `in (True, False, ...)`: 1 == True
            raise UserError(f"pruner.stream={stream!r}: true, false or auto (stream when in memory would not fit)")
        self.stream, self.stream_dir = stream, stream_dir
        self.recovery_steps = 0
        self._datamodule: Any = None
        self.details: dict[str, Any] = {}

    # --- the rounds --------------------------------------------------------------------------------------------------
    def use_data(self, datamodule: object, task: Any = None) -> None:
        self._datamodule = datamodule

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        self.recovery_steps = max_steps
        if self.stream is True and max_steps > 0:
            raise UserError(
                f"pruner.stream=true prunes without holding the whole model, and trainer.max_steps={max_steps} of "
                "recovery would hold it, with its gradients and optimizer state: stream with trainer.max_steps=0 "
                "(pruner.stream_dir=DIR keeps the pruned folder) and fine-tune that folder in a run of its own"
            )
        return 0 if round_idx == 0 else max_steps

    def stage(self, round_idx: int) -> str:
        return "dense" if round_idx == 0 else "oneshot"

    def round_sparsity(self, round_idx: int) -> float:
        return 0.0 if round_idx == 0 else self.sparsity

    def same_as_targeting(self, round_idx: int) -> bool:
        return round_idx == 1

    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        if round_idx == 1:
            self.prune(model)

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "oneshot": self.details}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        self.details = state.get("oneshot") or self.details

    def report(self, model: nn.Module) -> dict[str, Any]:
        return {**super().report(model), **({"oneshot": self.details} if self.details else {})}

    # --- pruning -----------------------------------------------------------------------------------------------------
    def solve(self, name: str, linear: nn.Linear, stats: InputStats | None) -> None:
        """One matrix pruned: its mask set, the weight updated in place by SparseGPT and its removed entries zeroed."""
        getattr(self, mask_buffer(f"{name}.weight")).copy_(~self.prune_matrix(linear, stats))

    def prune_matrix(self, linear: nn.Linear, stats: InputStats | None) -> torch.Tensor:
        """`linear`'s weight pruned in place (updated by SparseGPT, its removed entries zeroed) -> removed (bool)."""
        w = linear.weight
        if self.method == "sparsegpt":
            new, removed = sparsegpt(
                w.detach(), stats.h, self.sparsity, self.pattern, self.block, self.damp, self.update, overwrite_h=True
            )
            w.data.copy_(new)
        elif self.method == "wanda":
            removed = removal_mask(
                wanda_scores(w.detach(), stats.col_sq_norms), self.sparsity, self.pattern, per_row=True
            )
        else:
            removed = removal_mask(w.detach().abs(), self.sparsity, self.pattern, per_row=False)
        w.data.masked_fill_(removed, 0.0)
        return removed

    def prune_embedding(self, w: nn.Parameter) -> torch.Tensor:
        """An embedding table pruned in place by magnitude, per matrix (it has no calibration inputs of its own)
        -> removed (bool)."""
        removed = removal_mask(w.detach().abs(), self.sparsity, self.pattern, per_row=False)
        w.data.masked_fill_(removed, 0.0)
        return removed

    def calibration_device(self, model: nn.Module) -> torch.device:
        current = next(model.parameters()).device
        if self.device == "auto":
            return torch.device("cuda") if current.type == "cpu" and torch.cuda.is_available() else current
        return torch.device(self.device)

    @torch.no_grad()
    def prune(self, model: nn.Module) -> None:
        if self._datamodule is None:
            raise RuntimeError("OneShotPruner.use_data(datamodule) must be called before pruning")
        embeddings = {n for n, w in self._weights.items() if not isinstance(_owner(model, n), nn.Linear)}
        linears = set(self._weights) - embeddings
        for n, w in self._weights.items():
            check_groups(n, w.shape[1], self.pattern)
        home = next(model.parameters()).device
        device = self.calibration_device(model)
        cal = self.calibration_data()
        auto = self.auto_stream(model, device, cal) if self.stream == "auto" else None
        if self.stream is True or (auto is not None and auto["streamed"]):
            self.prune_streamed(model, cal, device, embeddings)
            if auto is not None:
                self.details["stream"]["auto"] = auto
            return
        model.to(device)
        batches = [to_device(b, device) for b in cal.batches]
        log.info(
            "one-shot %s (%s, sparsity %.2f) of %d matrices from %d calibration examples (%d tokens)",
            self.method,
            self.pattern,
            self.sparsity,
            len(linears),
            cal.report["examples"],
            cal.report["tokens"],
        )
        t0 = time.perf_counter()
        with peak_memory(device) as memory:
            # the embeddings first (no calibration inputs of their own, and tied to the output: magnitude, per
            # matrix), so that every Linear is calibrated on what the pruned embeddings give it
            for n in embeddings:
                getattr(self, mask_buffer(n)).copy_(~self.prune_embedding(self._weights[n]))
            if self.method == "magnitude":
                for n in sorted(linears):
                    self.solve(n.removesuffix(".weight"), _owner(model, n), None)  # type: ignore[arg-type]
            else:
                prune_sequentially(model, batches, linears, self.solve, full=self.method == "sparsegpt")
        seconds = time.perf_counter() - t0
        model.to(home)
        self.rank_checks += check_ranks_agree(self.masks, self.sparsity)
        self.apply_masks()
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.details = {
            **self.settings(cal, embeddings),
            **({"stream": {"auto": auto}} if auto is not None else {}),
            "seconds": seconds,
            "device": str(device),
            # the model once, plus what pruning added at its peak (calibration activations, H, the solver's copies)
            "memory": {
                **memory,
                "model_bytes": model_bytes,
                "peak_over_model": (model_bytes + memory["extra_bytes"]) / model_bytes,
            },
        }

    def settings(self, cal: CalibrationSet, embeddings: set[str]) -> dict[str, Any]:
        """What results.json's `oneshot` says of how the model was pruned."""
        return {
            "method": self.method,
            "pattern": str(self.pattern),
            "update": self.update if self.method == "sparsegpt" else None,
            "sparsity_of": "prunable matrices (Linear weights" + (", embeddings)" if embeddings else ")"),
            "embeddings": "magnitude" if embeddings else "not pruned",
            "calibration": cal.report,
            **({"block": self.block, "damp": self.damp} if self.method == "sparsegpt" else {}),
        }

    def calibration_data(self) -> CalibrationSet:
        if self.method == "magnitude":  # |W| alone: no calibration data, no passes through the model
            none = {"source": None, "examples": 0, "tokens": 0, "drawn": "none (magnitude needs none)"}
            return CalibrationSet([], none)
        return calibration_set(self._datamodule, **self.calibration)  # its settings are calibration_set's arguments

    def stream_blocker(self, model: nn.Module) -> str | None:
        """Why this run's model cannot be pruned streamed (one line), or None."""
        source = getattr(model, "pretrained_from", None)
        if source is None or getattr(model, "weights_from_run", None):
            return (
                "pruner.stream=true reads the weights from an imported checkpoint's safetensors files "
                "(model=hf model.path=DIR without ckpt=): this run's weights come from elsewhere"
            )
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                return "pruner.stream=true prunes in one process (each would write the same folder)"
        try:
            streamable(source)
        except (UserError, OSError, ValueError) as e:  # not a folder it can read, or not a family it streams
            return str(e) or type(e).__name__
        return None

    def auto_stream(self, model: nn.Module, device: torch.device, cal: CalibrationSet) -> dict[str, Any]:
        """`stream=auto`: stream when the model can be streamed and in-memory pruning would not fit the memory free
        on the calibration device -> the decision and its figures (results.json's `oneshot.stream.auto`). The
        in-memory need is an estimate: the model itself where it must move to that device, plus half the model
        (in-memory pruning peaked at 1.19-1.44x the model in `bench/RESULTS_oneshot.md`) and two copies of the
        calibration set's hidden states (fp32)."""
        model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        home = next(model.parameters()).device
        hidden = 2 * cal.report.get("tokens", 0) * int(model.cfg.d_model) * 4
        need = (model_bytes if home != device else 0) + model_bytes // 2 + hidden
        free = free_bytes(device)
        blocker = self.stream_blocker(model)
        if blocker is None and self.recovery_steps > 0:
            blocker = f"trainer.max_steps={self.recovery_steps} of recovery hold the whole model anyway"
        streamed = blocker is None and free is not None and need > free
        gib = 2**30
        log.info(
            "pruner.stream=auto: %s (in-memory pruning needs ~%.1f GiB on %s, %s free%s)",
            "streamed, one layer at a time" if streamed else "in memory",
            need / gib,
            device,
            "unknown" if free is None else f"{free / gib:.1f} GiB",
            f"; not streamable: {blocker}" if blocker and need > (free or 0) else "",
        )
        return {"streamed": streamed, "need_bytes": need, "free_bytes": free, "not_streamable": blocker}

    @torch.no_grad()
    def prune_streamed(self, model: nn.Module, cal: CalibrationSet, device: torch.device, embeddings: set[str]) -> None:
        """`stream=True` in a run: the imported checkpoint pruned one layer at a time (pruning.stream) with the
        resident model's weights and masks let go meanwhile, then read back from the pruned folder."""
        if (blocker := self.stream_blocker(model)) is not None:
            raise UserError(blocker)  # one error line now, before the model's weights are let go
        source = model.pretrained_from
        home = next(model.parameters()).device
        params = dict(model.named_parameters())
        for p in (*params.values(), *self.masks.values()):  # let go: the pruning holds one layer at a time
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        release_memory()
        out = Path(self.stream_dir) if self.stream_dir else Path(tempfile.mkdtemp(prefix="prunelab-stream-"))
        log.info("one-shot %s streamed from %s to %s", self.method, source, out)
        try:
            report = stream_prune(self, source, out, cal.batches, device)
            weights, masks = load_streamed(out, list(params), home)
        finally:
            if not self.stream_dir:
                shutil.rmtree(out, ignore_errors=True)
        for n, p in params.items():
            p.data = weights.pop(n).to(p.dtype)
        if sorted(masks) != sorted(self._weights):
            raise RuntimeError(f"the streamed masks are of {sorted(masks)}, the pruner's of {sorted(self._weights)}")
        for n, m in self.masks.items():
            m.data = masks[n].to(m.dtype)
        self.rank_checks += check_ranks_agree(self.masks, self.sparsity)
        self.apply_masks()
        self.details = {**self.settings(cal, embeddings), **report}
        if not self.stream_dir:
            self.details["stream"]["out"] = None  # a temporary folder, gone: the run's checkpoints hold the weights


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model
