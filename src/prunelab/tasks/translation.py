"""The NMT LightningModule: label-smoothed cross-entropy, Adam + inverse-sqrt warm-up, beam-search
evaluation scored with sacrebleu, and a pluggable Pruner called at fixed points of every step."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from prunelab.data.tokenizer import Tokenizer
from prunelab.errors import UserError
from prunelab.metrics import translation_scores
from prunelab.models.decoding import beam_search
from prunelab.models.surgery import match_structure
from prunelab.models.transformer import Transformer
from prunelab.pruning.base import Pruner

Batch = dict[str, Any]


def inverse_sqrt_schedule(warmup_steps: int) -> Callable[[int], float]:
    """Vaswani et al. (2017): linear warm-up to the peak lr, then decay with 1/sqrt(step)."""

    def factor(step: int) -> float:
        step = step + 1
        return min(step / warmup_steps, math.sqrt(warmup_steps / step))

    return factor


class TranslationTask(L.LightningModule):
    def __init__(
        self,
        model: Transformer,
        pruner: Pruner,
        tokenizer: Tokenizer,
        lr: float = 5e-4,
        warmup_steps: int = 4000,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        label_smoothing: float = 0.1,
        beam_size: int = 4,
        val_beam_size: int | None = None,
        length_penalty: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
    ):
        super().__init__()
        if optimizer not in ("adam", "adafactor"):
            raise UserError(f"task.optimizer must be adam or adafactor, got {optimizer!r}")
        self.model = model
        self.pruner = pruner
        self.tokenizer = tokenizer
        self.lr, self.warmup_steps, self.optimizer_name = lr, warmup_steps, optimizer
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size
        self.val_beam_size = val_beam_size or beam_size
        self.length_penalty, self.max_len_a, self.max_len_b = length_penalty, max_len_a, max_len_b
        self.pruner.attach(self.model)
        self._outputs: list[tuple[int, str, str]] = []  # (index, hypothesis, reference) of this eval epoch
        self.last_eval: dict[str, Any] = {}  # hypotheses and signature of the latest eval, for results
        self.train_tokens = 0

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint saved after head removal has smaller Q/K/V/O: cut the same heads before loading
        match_structure(self.model, checkpoint["state_dict"], "model.")

    # --- training --------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        logits = self.model(batch["src"], batch["tgt_in"])  # (B, T, V)
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            batch["tgt_out"].flatten(),
            ignore_index=self.tokenizer.pad_id,
            label_smoothing=self.label_smoothing,
        )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.train_tokens += batch["n_tokens"]  # real source + target tokens (padding not counted)
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.pruner.mask_gradients()

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        step, total = self.global_step, self.total_steps
        self.pruner.on_step_end(self.model, step, total)
        self.pruner.apply_masks()
        if step >= total:
            # Lightning validates at max_steps only on a val_check_interval boundary; asking to stop
            # makes it validate (and checkpoint) the final weights too.
            self.trainer.should_stop = True

    @property
    def total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=1e-9, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.Adafactor(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, inverse_sqrt_schedule(self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, split: str, beam: int) -> None:
        self.log(f"{split}/loss", self.loss(batch), sync_dist=True, batch_size=len(batch["ref"]))
        hyps = beam_search(
            self.model,
            batch["src"],
            self.tokenizer.bos_id,
            self.tokenizer.eos_id,
            beam_size=beam,
            alpha=self.length_penalty,
            max_len_a=self.max_len_a,
            max_len_b=self.max_len_b,
        )
        for i, h, r in zip(batch["idx"].tolist(), hyps, batch["ref"], strict=True):
            self._outputs.append((i, self.tokenizer.decode(h), r))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_beam_size)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.beam_size)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _score(self, split: str) -> None:
        outputs = self._outputs
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[list[tuple[int, str, str]]] = [[] for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, outputs)
            outputs = [o for part in gathered for o in part]
        by_idx = dict((i, (h, r)) for i, h, r in outputs)  # DDP pads shards by repetition: dedupe
        order = sorted(by_idx)
        hyps = [by_idx[i][0] for i in order]
        refs = [by_idx[i][1] for i in order]
        scores = translation_scores(hyps, refs)
        self.log(f"{split}/bleu", scores.bleu, prog_bar=True)
        self.log(f"{split}/ter", scores.ter)
        if split == "val" and self.trainer.state.fn == "fit":
            self.log("prune/sparsity", self.mask_sparsity())
            # checkpoints are chosen only among weights that carry the round's final mask
            final = self.pruner.mask_is_final(self.global_step, self.total_steps)
            self.log("val/bleu_at_target", scores.bleu if final else float("nan"))
        self.last_eval[split] = {"hypotheses": hyps, "scores": scores}

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    def mask_sparsity(self) -> float:
        return self.pruner.masked_fraction()
