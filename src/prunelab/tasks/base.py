"""What every prunelab LightningModule shares: the model, a pluggable Pruner called at fixed points of every
step, the Recipe it is handed (optimizer, lr schedule and warm-up, prunelab.tasks.recipe), and checkpoints that carry
removed heads/components.

Subclasses (translation, classification, language modeling) define the loss, evaluation, and which validation metric
picks the best checkpoint (`monitor`, logged as NaN until the round's mask is final); their constructors name only
their own settings. With `task.distill.teacher`, the trunk hands over a Distiller (prunelab.tasks.distill,
`use_distiller`) and every training step also distils from its teacher: a subclass's training_step computes its
logits once (`student_logits`) and hands its task loss and keep mask to `distilled`.

Floor: tasks. Nothing here imports training/: the trunk (prunelab.training.task.build_task) builds the Recipe and the
Distiller from the config and hands them in, as the round loop hands over each round's step budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from prunelab.data.batching import to_device
from prunelab.distributed import gather_objects
from prunelab.models.surgery import match_structure
from prunelab.pruning.base import Pruner
from prunelab.tasks.distill import Distiller
from prunelab.tasks.guards import LossWatch, check_weights, rng_state, set_rng_state
from prunelab.tasks.recipe import Recipe, RoundBudget, RoundSchedule, clip, round_steps, scaled

Batch = dict[str, Any]
Named = Mapping[str, Tensor]  # by name: a layer stack's positions that count, a logged part of the loss


def gathered_by_index(outputs: list[tuple]) -> list[tuple]:
    """This eval epoch's (index, ...) records from every DDP rank, one per index, in index order (DDP pads
    shards by repeating examples, so an index may come twice)."""
    by_idx = {o[0]: o for part in gather_objects(outputs) for o in part}
    return [by_idx[i] for i in sorted(by_idx)]


class PrunableTask(L.LightningModule):
    kind: str = ""  # the data it takes: translation | classification | language_modeling (data modules name theirs)
    model_kinds: tuple[str, ...] | None = None  # the networks it trains (their `kind`); None: those of its own kind
    score_key: str = ""  # its score, logged as val/<key> and test/<key> (bleu, acc, ...)
    score_name: str = ""  # the score for people: "BLEU", "accuracy"
    higher_is_better = True  # val/<score_key> ranks this way (perplexity: False; the monitored value is then negated)
    monitor = "val/score_at_target"  # the ModelCheckpoint metric: val/<score_key>_at_target
    finite_check_every: int | None = None  # steps between host reads of the loss check; None: 1 on CPU, 50 on GPU

    def __init__(self, model: torch.nn.Module, pruner: Pruner, recipe: Recipe | None = None):
        super().__init__()
        self.model = model
        self.pruner = pruner
        self.recipe = recipe or Recipe()  # optimizer, schedule, warm-up: built by the trunk from task.lr, ...
        self.pruner.attach(self.model)
        self.last_eval: dict[str, Any] = {}  # predictions and scores of the latest eval, for results
        self.step_budget: RoundBudget | None = None  # the round's steps and clock, handed over by the round loop
        self.lr_schedule = RoundSchedule(self.recipe)  # the recipe's schedule over the round, and what it reached
        self.train_tokens = 0  # real tokens the run has trained on, the rounds before a resume included
        self.process_tokens = 0  # those trained in this process (its throughput)
        self._resumed_rng: dict[str, Any] | None = None  # last.ckpt's generators, set at the resumed first step
        self._loss_watch = LossWatch()  # the first non-finite training loss, kept on the loss's device
        self.distiller: Distiller | None = None  # task.distill's teacher and settings (use_distiller), or None

    def use_distiller(self, distiller: Distiller | None) -> None:
        """The Distiller the trunk built from `task.distill` (None: no distillation); a teacher that cannot teach
        this task's model is one UserError."""
        if distiller is not None:
            distiller.check_student(self.model)
        self.distiller = distiller

    @property
    def score(self) -> dict[str, str]:
        """What this task is scored by, as results.json and every level report it."""
        return {"key": self.score_key, "name": self.score_name}

    @classmethod
    def scorer(cls, datamodule: Any, settings: Any = None) -> Any:
        """The importance studies' Scorer for this task (prunelab.scoring.scoring), on `datamodule`'s data;
        `settings`: decoding settings where the score decodes (DecodeSettings). Each task defines its own."""
        raise NotImplementedError(f"{cls.__name__} does not say how the importance studies score it (scorer)")

    def own_scorer(self, datamodule: Any, settings: Any = None) -> Any:
        """scorer() as this task instance evaluates (a task whose decoding depends on its model overrides it)."""
        return self.scorer(datamodule, settings)

    def run_report(self) -> dict[str, Any]:
        """What results.json holds about this task besides its metrics (e.g. how the score was computed): here the
        distillation settings (`distillation`), when the task distils; subclasses add theirs."""
        return {"distillation": self.distiller.report()} if self.distiller is not None else {}

    # --- distillation (prunelab.tasks.distill) -----------------------------------------------------------------------
    def forward_logits(self, model: torch.nn.Module, batch: Batch) -> Tensor:
        """`model`'s logits on a training batch, as this task runs its model: the student (self.model) and the
        teacher go through here alike. Each task defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its model computes logits (forward_logits)")

    def student_logits(self, batch: Batch) -> Tensor:
        """forward_logits(self.model, batch); when distilling hidden states, the student's layer outputs are
        recorded on the way for `distilled`."""
        if self.distiller is None:
            return self.forward_logits(self.model, batch)
        with self.distiller.watch(self.model):
            return self.forward_logits(self.model, batch)

    def distilled(
        self, task_loss: Tensor, logits: Tensor, batch: Batch, keep: Tensor | None = None, masks: Named | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training step's loss from its task loss and the student's `logits` (student_logits), and the parts to
        log: the task loss itself without a teacher; with one, Distiller.loss (the KL averaged over the positions
        `keep`, the units the task loss averages over; hidden states over the positions `masks` gives per stack)."""
        if self.distiller is None:
            return task_loss, {}
        self.distiller.place(self.model)
        return self.distiller.loss(task_loss, logits, lambda m: self.forward_logits(m, batch), keep, masks)

    def on_fit_start(self) -> None:
        if self.distiller is not None:
            self.distiller.place(self.model)  # the teacher goes where the student is, in its dtype

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite(None, self.global_step)  # a loss that went bad since the host last looked
        check_weights(checkpoint["state_dict"], self.global_step)  # never overwrite a good last.ckpt with diverged ones
        extra = self.pruner.checkpoint_state()
        if extra:
            checkpoint["pruner_state"] = extra
        checkpoint["rng_state"] = rng_state()  # dropout's next draws: a resumed round continues them exactly
        checkpoint["train_tokens"] = int(self.train_tokens)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint saved after head or component removal has other shapes: remove the same parts first
        match_structure(self.model, checkpoint["state_dict"], "model.")
        # the pruner's own state comes back when training resumes (or a finished round is loaded), not when
        # a round's best checkpoint is evaluated: that must not rewind what the pruner has done since
        if self._trainer is None or self._trainer.state.fn == "fit":
            self.pruner.load_checkpoint_state(checkpoint.get("pruner_state", {}))
            self.train_tokens = int(checkpoint.get("train_tokens", self.train_tokens))
        if self._trainer is not None and self._trainer.state.fn == "fit":  # a round resumed from its last.ckpt
            # set at its first step, not now: the new train DataLoader iterator draws a seed from torch's
            # generator first, which the uninterrupted run drew at the start of its epoch
            self._resumed_rng = checkpoint.get("rng_state")

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Batches are flat dicts: move their tensors and leave the rest (reference strings) alone, instead
        of Lightning's walk over every string of every list (milliseconds per step on small models)."""
        if isinstance(batch, dict):
            return to_device(batch, device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def log_training_step(self, loss: Tensor, batch: Batch, parts: Named | None = None) -> None:
        """Count the step's real tokens; log loss and lr, and the loss's `parts` (distilled: `train/kd_loss`,
        `train/hidden_loss`), only at the steps the Trainer sends to the loggers (every trainer.log_every_n_steps,
        and the last): self.log costs about a millisecond a call."""
        self.train_tokens += batch["n_tokens"]  # real tokens (padding not counted)
        self.process_tokens += batch["n_tokens"]
        connector = getattr(self.trainer, "_logger_connector", None)
        due = connector is None or connector.should_update_logs or self.global_step + 1 >= self.total_steps
        if due:
            self.log("train/loss", loss, prog_bar=True)
            self.log("lr", self.optimizers().param_groups[0]["lr"])
            for name, value in (parts or {}).items():
                self.log(f"train/{name}", value)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resumed_rng is not None:
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        self.pruner.on_batch(self.model, batch)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.pruner.mask_gradients()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, total = self.global_step, self.total_steps
        self.check_finite(outputs["loss"] if isinstance(outputs, dict) else outputs, step, last=step >= total - 1)
        self.pruner.on_step_end(self.model, step, total)
        self.pruner.apply_masks()
        if step >= total:
            # Lightning validates at max_steps only on a val_check_interval boundary; asking to stop
            # makes it validate (and checkpoint) the final weights too.
            self.trainer.should_stop = True

    def check_finite(self, loss: Tensor | None, step: int, last: bool = False) -> None:
        """Stop at the first non-finite training loss, naming its step (LossWatch.check: the host reads the record
        every `finite_check_every` steps, at the round's last step and before any checkpoint is written)."""
        self._loss_watch.check(loss, step, last, self.finite_check_every, self._trainer)

    def use_step_budget(self, budget: RoundBudget | None) -> None:
        """The round's step budget (max_steps and its clock), handed over by the round loop before the round trains;
        the lr schedule and gradual pruning follow it from the first step."""
        self.step_budget = budget
        self.lr_schedule.restart()

    @property
    def total_steps(self) -> int:
        """The round's optimizer steps as now estimated (recipe.round_steps: the step budget's, fewer when a time
        budget will end the round first, and the Trainer's epoch limit)."""
        estimate = float(self._trainer.estimated_stepping_batches) if self._trainer is not None else None
        return round_steps(self.step_budget, self.global_step, estimate, type(self).__name__)

    @property
    def warmup(self) -> int:
        """Warm-up steps: `warmup_fraction` of the round's steps as now estimated (a time budget's estimate is
        revised every step, so the warm-up follows the budget from the first step), else `warmup_steps`."""
        return self.recipe.warmup_of(self.total_steps)

    @property
    def peak_lr_factor(self) -> float:
        """The highest fraction of the peak lr the round's schedule reached."""
        return self.lr_schedule.peak

    @property
    def last_lr_step(self) -> int:
        return self.lr_schedule.last_step

    def lr_factor(self, step: int) -> float:
        """The lr schedule's factor at optimizer step `step`, from the round's steps as now estimated."""
        return self.lr_schedule.factor(step, self.total_steps)

    def eval_cost_ratio(self) -> float:
        """The test's cost per example relative to a validation's (a larger test beam costs more)."""
        return 1.0

    def configure_optimizers(self) -> Any:
        opt, shape = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_schedule.traced(shape))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def schedule_report(self) -> dict[str, Any]:
        """How the round's lr schedule went (results.json, per level: RoundSchedule.report)."""
        return self.lr_schedule.report()

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
        """The recipe's optimizer over `params` and its lr factor by optimizer step (warm-up and decay follow the
        round's steps as a time budget revises them): D-Net's, and that of any network trained beside it with the
        same recipe (AttendOut's A-Net)."""
        return self.recipe.build(params, scaled=scaled(self._trainer)), self.lr_factor

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip after the masked gradients were zeroed (on_before_optimizer_step runs first), so the norm counts
        only kept weights (recipe.clip: here for a fused optimizer under bf16-mixed, else by Lightning)."""
        clip(optimizer, gradient_clip_val, gradient_clip_algorithm, scaled(self._trainer), self.clip_gradients)

    def log_target(self, score: float) -> None:
        """During fit: the monitored score, NaN while the round's mask is still changing, so the best
        checkpoint is chosen only among weights at the round's final sparsity."""
        if self.trainer.state.fn == "fit":
            self.log("prune/sparsity", self.mask_sparsity())
            final = self.pruner.mask_is_final(self.global_step, self.total_steps)
            self.log(self.monitor, score if final else float("nan"))

    def mask_sparsity(self) -> float:
        return self.pruner.masked_fraction()
