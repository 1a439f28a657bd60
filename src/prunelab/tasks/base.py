"""What every prunelab LightningModule shares: the model, a pluggable Pruner called at fixed points of every
step, Adam (or Adafactor) with inverse-sqrt warm-up, and checkpoints that carry removed heads/components.

Subclasses (translation, classification, language modeling) define the loss, evaluation, and which validation metric
picks the best checkpoint (`monitor`, logged as NaN until the round's mask is final). With `task.distill.teacher`, every
training step also distils from a teacher (prunelab.training.distill): a subclass's training_step computes its logits
once (`student_logits`) and hands its task loss and keep mask to `distilled`."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from prunelab.data.batching import to_device
from prunelab.distributed import gather_objects
from prunelab.errors import NonFiniteError, UserError
from prunelab.models.surgery import match_structure
from prunelab.pruning.base import Pruner
from prunelab.training.budget import StepBudget
from prunelab.training.distill import DEFAULTS as DISTILL_DEFAULTS
from prunelab.training.distill import Distiller


def gathered_by_index(outputs: list[tuple]) -> list[tuple]:
    """This eval epoch's (index, ...) records from every DDP rank, one per index, in index order (DDP pads
    shards by repeating examples, so an index may come twice)."""
    by_idx = {o[0]: o for part in gather_objects(outputs) for o in part}
    return [by_idx[i] for i in sorted(by_idx)]


def inverse_sqrt_factor(step: int, warmup: int) -> float:
    """Vaswani et al. (2017) at optimizer step `step` (0-based): linear warm-up to the peak lr, then 1/sqrt(step)."""
    step = step + 1
    return min(step / warmup, math.sqrt(warmup / step))


def linear_factor(step: int, warmup: int, total: int) -> float:
    """BERT's fine-tuning schedule (Devlin et al. 2019): linear warm-up to the peak lr, then linear decay to 0 at
    step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def inverse_sqrt_schedule(warmup_steps: int) -> Callable[[int], float]:
    return lambda step: inverse_sqrt_factor(step, warmup_steps)


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    return lambda step: linear_factor(step, warmup_steps, total_steps)


OPTIMIZERS = ("adam", "adamw", "adafactor")
SCHEDULES = ("inverse_sqrt", "linear")


def rng_state() -> dict[str, Any]:
    """torch's generators now (the CPU one and every initialised GPU's): what dropout draws next."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Back to `rng_state()`'s generators (a GPU's only on a machine with as many GPUs)."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class PrunableTask(L.LightningModule):
    kind: str = ""  # the data it takes: translation | classification (data modules name theirs)
    score_key: str = ""  # its score, logged as val/<key> and test/<key> (bleu, acc, ...)
    score_name: str = ""  # the score for people: "BLEU", "accuracy"
    higher_is_better = True  # val/<score_key> ranks this way (perplexity: False; the monitored value is then negated)
    monitor = "val/score_at_target"  # the ModelCheckpoint metric: val/<score_key>_at_target
    finite_check_every: int | None = None  # steps between host reads of the loss check; None: 1 on CPU, 50 on GPU

    def __init__(
        self,
        model: torch.nn.Module,
        pruner: Pruner,
        lr: float = 3e-3,
        warmup_steps: int = 200,
        optimizer: str = "adam",
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        schedule: str = "inverse_sqrt",
        warmup_fraction: float | None = None,
        distill: Mapping[str, Any] | None = DISTILL_DEFAULTS,
    ):
        super().__init__()
        if isinstance(distill, DictConfig):  # from Hydra: a plain dict
            distill = OmegaConf.to_container(distill, resolve=True)  # type: ignore[assignment]
        if optimizer not in OPTIMIZERS:
            raise UserError(f"task.optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if schedule not in SCHEDULES:
            raise UserError(f"task.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if warmup_fraction is not None and not 0.0 <= warmup_fraction < 1.0:
            raise UserError(f"task.warmup_fraction must be in [0, 1) or null, got {warmup_fraction}")
        self.model = model
        self.pruner = pruner
        self.lr, self.warmup_steps, self.optimizer_name = lr, warmup_steps, optimizer
        self.betas, self.weight_decay = tuple(betas), weight_decay
        self.schedule, self.warmup_fraction = schedule, warmup_fraction
        self.pruner.attach(self.model)
        self.last_eval: dict[str, Any] = {}  # predictions and scores of the latest eval, for results
        self.step_budget: StepBudget | None = None  # the round's steps and clock, handed over by the round loop
        self.peak_lr_factor = 0.0  # the highest lr factor the round's schedule reached (1: the peak lr)
        self.last_lr_step = -1  # the latest step the schedule was read at in this process
        self.schedule_seen: dict[str, int] = {}  # warm-up and total steps at the latest scheduler step
        self.train_tokens = 0  # real tokens the run has trained on, the rounds before a resume included
        self.process_tokens = 0  # those trained in this process (its throughput)
        self._resumed_rng: dict[str, Any] | None = None  # last.ckpt's generators, set at the resumed first step
        # the first non-finite training loss (its step, -1: none yet, and value), kept on the loss's device
        self._first_bad: torch.Tensor | None = None
        self._bad_loss: torch.Tensor | None = None
        # task.distill: the teacher and its settings, or None; a plain object, so the teacher is no submodule (not
        # in the state_dict, the checkpoints or the optimizer)
        self.distiller: Distiller | None = Distiller.from_settings(distill)
        if self.distiller is not None:
            self.distiller.check_student(model)

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

    # --- distillation (prunelab.training.distill) --------------------------------------------------------------------
    def forward_logits(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """`model`'s logits on a training batch, as this task runs its model: the student (self.model) and the
        teacher go through here alike. Each task defines it."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its model computes logits (forward_logits)")

    def student_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """forward_logits(self.model, batch); when distilling hidden states, the student's layer outputs are
        recorded on the way for `distilled`."""
        if self.distiller is None:
            return self.forward_logits(self.model, batch)
        with self.distiller.watch(self.model):
            return self.forward_logits(self.model, batch)

    def distilled(
        self,
        task_loss: torch.Tensor,
        logits: torch.Tensor,
        batch: dict[str, Any],
        keep: torch.Tensor | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training step's loss from its task loss and the student's `logits` (student_logits): the task loss
        itself without a teacher; with one, (1 - alpha) * task_loss + alpha * T^2 * KL(teacher || student) averaged
        over the positions `keep` (the units the task loss averages over) (+ hidden_weight * the hidden-state MSE,
        over the positions `masks` gives per stack). Also the parts to log (log_training_step)."""
        if self.distiller is None:
            return task_loss, {}
        self.distiller.place(self.model)
        return self.distiller.loss(task_loss, logits, lambda m: self.forward_logits(m, batch), keep, masks)

    def on_fit_start(self) -> None:
        if self.distiller is not None:
            self.distiller.place(self.model)  # the teacher goes where the student is, in its dtype

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_finite(None, self.global_step)  # a loss that went bad since the host last looked
        # never overwrite a good checkpoint (last.ckpt) with diverged weights: stop the run instead (only the
        # network's tensors: pruners keep NaN placeholders, e.g. for scores not computed yet)
        bad = [
            k
            for k, v in checkpoint["state_dict"].items()
            if k.startswith("model.") and v.is_floating_point() and not v.isfinite().all()
        ]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise NonFiniteError(f"weights ({bad[0]}{more})", self.global_step)
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

    def log_training_step(
        self, loss: torch.Tensor, batch: dict[str, Any], parts: Mapping[str, torch.Tensor] | None = None
    ) -> None:
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

    def check_finite(self, loss: torch.Tensor | None, step: int, last: bool = False) -> None:
        """Stop at the first non-finite training loss, naming its step. The first bad step and its loss are
        recorded on the loss's device at every step; the host reads them every `finite_check_every` steps
        (every step on CPU, where reading is free; every 50 on a GPU, so training never waits for the
        device each step), at the round's last step and before any checkpoint is written. All DDP ranks
        decide together."""
        if loss is not None:
            loss = loss.detach().float().reshape(())
            if self._first_bad is None or self._first_bad.device != loss.device:
                self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
                self._bad_loss = torch.zeros((), device=loss.device)
            newly = ~torch.isfinite(loss) & (self._first_bad < 0)
            self._first_bad = torch.where(newly, torch.full_like(self._first_bad, step), self._first_bad)
            self._bad_loss = torch.where(newly, loss, self._bad_loss)
            every = self.finite_check_every or (1 if loss.device.type == "cpu" else 50)
            if not last and step % every:
                return
        first = int(self._first_bad) if self._first_bad is not None else -1
        bad = first >= 0
        if self._trainer is not None and self._trainer.world_size > 1:
            bad = self._trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:  # a rank that saw no bad loss itself reports the step it stopped at
            what = f"loss ({float(self._bad_loss):g})" if first >= 0 else "loss (on another process)"
            raise NonFiniteError(what, first if first >= 0 else step)

    def use_step_budget(self, budget: StepBudget | None) -> None:
        """The round's step budget (max_steps and its clock), handed over by the round loop before the round trains;
        the lr schedule and gradual pruning follow it from the first step."""
        self.step_budget = budget
        self.peak_lr_factor, self.schedule_seen, self.last_lr_step = 0.0, {}, -1

    @property
    def total_steps(self) -> int:
        """The round's optimizer steps: its step budget's max_steps (and the Trainer's epoch limit, when one is
        attached), or fewer when a time budget (trainer.max_time) will end the round first, at the rate trained so
        far (training.budget.StageClock): the lr schedule and gradual pruning then end with the budget."""
        steps = math.inf
        if self._trainer is not None:
            steps = float(self._trainer.estimated_stepping_batches)
        if self.step_budget is not None:
            steps = min(steps, self.step_budget.total(self.global_step))
        if steps == math.inf and self._trainer is None:
            raise RuntimeError(f"{type(self).__name__}: no step budget (use_step_budget) and no Trainer attached")
        return int(steps) if math.isfinite(steps) else int(1e12)

    @property
    def warmup(self) -> int:
        """Warm-up steps: `warmup_fraction` of the round's steps as now estimated (a time budget's estimate is
        revised every step, so the warm-up follows the budget from the first step), else `warmup_steps`."""
        return self.warmup_of(self.total_steps)

    def warmup_of(self, total: int) -> int:
        if self.warmup_fraction is None:
            return max(1, self.warmup_steps)
        return max(1, round(self.warmup_fraction * total))

    def lr_factor(self, step: int) -> float:
        """The lr schedule's factor at optimizer step `step`, from the round's steps as now estimated (read once a
        step), which it records (`schedule_seen`)."""
        total = self.total_steps
        warmup = self.warmup_of(total)
        self.schedule_seen = {"warmup_steps": warmup, "total_steps": total}
        if self.schedule == "inverse_sqrt":
            return inverse_sqrt_factor(step, warmup)
        return linear_factor(step, warmup, total)

    def eval_cost_ratio(self) -> float:
        """The test's cost per example relative to a validation's (a larger test beam costs more)."""
        return 1.0

    def configure_optimizers(self) -> Any:
        opt, shape = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])

        def factor(step: int) -> float:  # the schedule, noting the highest lr it reached
            # a resumed round jumps to its restored step: the steps before it were trained in an earlier process
            before = max((shape(s) for s in range(self.last_lr_step + 1, step)), default=0.0)
            value = shape(step)
            self.peak_lr_factor = max(self.peak_lr_factor, value, before)
            self.last_lr_step = max(self.last_lr_step, step)
            return value

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def schedule_report(self) -> dict[str, Any]:
        """How the round's lr schedule went (results.json, per level): warm-up and total steps as last estimated,
        and the highest fraction of the peak lr reached (below 1: the round ended during its warm-up)."""
        return {
            "schedule": self.schedule,
            "peak_lr": self.lr,
            **self.schedule_seen,  # as estimated at the round's last optimizer step
            "peak_lr_fraction_reached": round(self.peak_lr_factor, 6),
        }

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
        """The task's optimizer over `params` (task.optimizer, lr, betas, weight_decay) and its lr factor by
        optimizer step (task.schedule, warm-up): D-Net's, and that of any network trained beside it with the
        same recipe (AttendOut's A-Net)."""
        if self.optimizer_name == "adam":
            # the fused kernel (CPU and CUDA) updates all tensors in one pass: 3-4x faster than the per-tensor loop;
            # not under fp16 loss scaling, where it would unscale inside its step, after gradient clipping
            fused = all(p.device.type in ("cpu", "cuda") for p in params) and self._loss_scaler() is None
            opt = torch.optim.Adam(
                params, lr=self.lr, betas=self.betas, eps=1e-9, weight_decay=self.weight_decay, fused=fused
            )
        elif self.optimizer_name == "adamw":
            # decoupled weight decay on the weight matrices only, not on biases and LayerNorm (BERT, HF's Trainer)
            groups = [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
            fused = all(p.device.type in ("cpu", "cuda") for p in params) and self._loss_scaler() is None
            opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, eps=1e-8, fused=fused)
        else:
            opt = torch.optim.Adafactor(params, lr=self.lr, weight_decay=self.weight_decay)
        return opt, self.lr_factor  # warm-up and decay follow the round's steps as a time budget revises them

    def _loss_scaler(self) -> Any:
        """The fp16 GradScaler of the precision plugin, or None (fp32, bf16: gradients are never scaled)."""
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip after the masked gradients were zeroed (on_before_optimizer_step runs first), so the norm counts
        only kept weights. Lightning's mixed-precision plugin refuses to clip for a fused optimizer because
        an fp16 one unscales inside its step; bf16-mixed scales nothing, so the gradients are clipped here."""
        if not gradient_clip_val:
            return
        if getattr(optimizer, "_step_supports_amp_scaling", False) and self._loss_scaler() is None:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def log_target(self, score: float) -> None:
        """During fit: the monitored score, NaN while the round's mask is still changing, so the best
        checkpoint is chosen only among weights at the round's final sparsity."""
        if self.trainer.state.fn == "fit":
            self.log("prune/sparsity", self.mask_sparsity())
            final = self.pruner.mask_is_final(self.global_step, self.total_steps)
            self.log(self.monitor, score if final else float("nan"))

    def mask_sparsity(self) -> float:
        return self.pruner.masked_fraction()
