"""The Pruner contract: `Pruner` (the hooks every method may use) and `MaskPruner` (weight masks with one
score seam). Structural pruners (heads, components, AttendOut) subclass `Pruner` and change the model itself;
mask pruners (MP, the lottery family, random) subclass `MaskPruner` and mostly say how to score: they are handed a
weight criterion (prunelab.criteria: magnitude by default), or override `scores(model)`.

A pruner is an `nn.Module` owned by the task, so its masks (and any weight snapshots a method keeps, such as
θ_0 for lottery tickets) are buffers that land in every checkpoint and come back on resume.

The whole call order, and who calls what:

    task.__init__ (training.task.build_task)
        attach(model)                    register masks/buffers for this model (before any checkpoint loads)
    training.weights.start_weights
        use_initial_weights(state)       `ckpt=RUN`: that run's θ_0 (init.pt), for methods that rewind to it
    training.rounds.Rounds.run           (the round loop; `rounds` rounds, each a fresh trainer.fit)
        use_data(datamodule, task)       once, before the first round (scoring with data: I_h, Eq. 1)
        round_steps(r, max_steps, pretrained)   the round's training steps (0: evaluate only)
        on_round_start(model, r)         a new round: rewind weights, set this round's mask
          or enter_round(r)              a round resumed from its checkpoint, or a finished one reloaded
        every training step (the task's Lightning hooks):
            on_batch(model, batch)       before the forward (AttendOut trains its A-Net here)
            mask_gradients()             before the optimizer step (and before gradient clipping)
            on_step_end(model, step, total)   after it; gradual schedules prune here (prune_to)
            apply_masks()                then masked weights are zeroed in place
        mask_is_final(step, total)       at each validation: may this checkpoint be the round's best?
        round_sparsity(r), stage(r), same_as_targeting(r), report(model)   the level's figures
        on_round_end(model, r)           after the round is scored: e.g. the next round's mask
    every checkpoint (PrunableTask.on_save_checkpoint / on_load_checkpoint)
        checkpoint_state() / load_checkpoint_state(state)   state that is not in buffers

Masks are applied in place after the optimizer step (no forward hooks, no weight copies).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunelab.criteria.base import WeightCriterion, resolve
from prunelab.criteria.weights import WEIGHT_CRITERIA
from prunelab.distributed import gathered, is_sharded, local_part, local_rows, rows_differing_across_ranks
from prunelab.errors import UserError
from prunelab.models.sparse_format import bitmask_bytes
from prunelab.pruning.masks import csc_bytes, keep_top, prunable_weights
from prunelab.pruning.schedule import Progress

MASK_PREFIX = "mask__"


def mask_buffer(param_name: str) -> str:
    """The buffer holding the mask of a parameter: `enc.0.ff.fc1.weight` -> `mask__enc__0__ff__fc1__weight`
    (in a checkpoint's state_dict it is under the task's `pruner.`)."""
    return MASK_PREFIX + param_name.replace(".", "__")


@torch.no_grad()
def mask_checksums(masks: dict[str, Tensor]) -> Tensor:
    """(n_masks, 2) float64: per mask, the number of kept entries and the sum of their flat positions (exact
    up to 10^8 entries per matrix), so that two ranks holding different masks disagree here."""
    rows = []
    for m in masks.values():
        kept = m.flatten().double()
        rows.append(torch.stack([kept.sum(), (kept * torch.arange(kept.numel(), device=m.device)).sum()]))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def check_ranks_agree(masks: dict[str, Tensor], sparsity: float) -> bool:
    """Under DDP, every rank must hold the same masks after a pruning step (a mask computed from rank-local
    data or weights would silently train different models). One all-gather of a few numbers per pruning step,
    so it always runs; a disagreement stops the run. False when there is nothing to compare (one process)."""
    rows = rows_differing_across_ranks(mask_checksums(masks))
    if rows is None:
        return False
    differ = [name for i, name in enumerate(masks) if i in rows]
    if differ:
        raise RuntimeError(
            f"DDP ranks hold different masks after pruning to sparsity {sparsity:.4f}: {', '.join(differ[:3])}"
            + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        )
    return True


def dense_report(model: nn.Module) -> dict[str, Any]:
    """The figures of a model without weight masks: every parameter counts, stored dense in fp32."""
    total = sum(p.numel() for p in model.parameters())
    return {
        "sparsity": {"overall": 0.0},
        "params": {"total": total, "remaining": total},
        "memory": {"model": {"dense_bytes": 4 * total}},
    }


class Pruner(nn.Module):
    """Every hook of the call order above, doing nothing: a structural method overrides what it needs."""

    rounds: int = 1  # how many `trainer.fit` rounds the method needs
    tasks: tuple[str, ...] | None = None  # the task kinds it can prune (their `kind`); None: any task
    needs_trained_model: bool = False  # True: it prunes trained weights (`ckpt=` or an imported checkpoint) only

    def __init__(self) -> None:
        super().__init__()
        self.rank_checks = 0  # pruning steps whose masks were compared across DDP ranks (all equal)

    @property
    def sparsity_means(self) -> str:
        """What `sparsity` counts for this method (results.json `sparsity.means`): weights, heads, components or
        the model's cost, so that a sweep's 0.5 is never read as the same thing across methods."""
        return "not read by this pruner"

    def results(self, model: nn.Module) -> dict[str, Any]:
        """`report(model)` with `sparsity.means` added: what the run's results.json records."""
        out = self.report(model)
        out["sparsity"] = {**out.get("sparsity", {}), "means": self.sparsity_means}
        return out

    # --- lifecycle (see the call order in the module docstring) --------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Register what the method keeps for this model (buffers, so checkpoints carry it)."""

    def use_initial_weights(self, state: dict[str, Tensor]) -> None:
        """The run starts from a trained checkpoint (`ckpt=`) whose run saved θ_0 (init.pt): methods that
        rewind to θ_0 take that run's initialisation instead of this run's."""

    def use_data(self, datamodule: object, task: Any) -> None:
        """Pruners that score with data keep it (head importance), and the task's way of scoring a model
        (`task.scorer(datamodule, settings)`: BLEU or accuracy, for Wang & Tu's contribution)."""

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        """Training steps of round `round_idx` (0: the round only evaluates the weights it starts from).
        `pretrained`: the run started from a trained checkpoint (`ckpt=`)."""
        return max_steps

    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        """A new round starts (not a resumed one): iterative methods rewind weights here."""

    def enter_round(self, round_idx: int) -> None:
        """Instead of on_round_start, when a round resumes from its checkpoint (nothing to rewind)."""

    def on_batch(self, model: nn.Module, batch: dict) -> None:
        """Every training batch, before the model's own step (AttendOut trains a second network on it)."""

    def mask_gradients(self) -> None:
        """Before the optimizer step: zero the gradients of masked weights."""

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After every optimizer step, before the masks are applied; gradual methods prune here."""

    def apply_masks(self) -> None:
        """After on_step_end: zero the masked weights in place."""

    def mask_is_final(self, step: int, total_steps: int) -> bool:
        """True once the mask of this round will not change any more (best checkpoints are chosen only then)."""
        return True

    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        """After the round's best checkpoint was scored: iterative methods compute the next mask here."""

    def checkpoint_state(self) -> dict[str, Any]:
        """State that is not in the module's buffers (e.g. auxiliary networks' optimizers), saved in every
        checkpoint as `pruner_state`; tensors and plain containers only (checkpoints load weights_only)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Take back what checkpoint_state gave (called when a checkpoint is loaded)."""

    # --- what a round reports --------------------------------------------------------------------------
    def round_sparsity(self, round_idx: int) -> float:
        """The sparsity round `round_idx` ends at (for the log)."""
        return 0.0

    def stage(self, round_idx: int) -> str | None:
        """A name for what round `round_idx` holds (e.g. "pruned"), shown with its level in results.json."""
        return None

    def same_as_targeting(self, round_idx: int) -> bool:
        """Whether round `round_idx`'s result equals a run of this method targeting that round's sparsity."""
        return round_idx == self.rounds - 1

    def masked_fraction(self) -> float:
        """Fraction of the prunable weights masked (or heads removed), logged as prune/sparsity at each eval."""
        return 0.0

    def report(self, model: nn.Module) -> dict[str, Any]:
        """Sparsity, parameter counts and memory of the model as the method leaves it (results.json)."""
        return dense_report(model)


class MaskPruner(Pruner):
    """Weight masks, one per prunable matrix (Linear weights; the embedding only if asked). The scores come from the
    weight criterion the pruner is handed (`criterion`: `magnitude`, |w|, by default, for MP and the lottery-ticket
    family; or any prunelab.criteria.WeightCriterion by `_target_`), or a method overrides `scores(model)`;
    `prune_to(sparsity)` is the one way masks change: per matrix or globally the entries with the lowest scores are
    masked, already-masked entries stay masked, DDP ranks are checked to agree, and the masks are applied."""

    @property
    def sparsity_means(self) -> str:
        where = "each weight matrix" if self.scope == "per_matrix" else "all of them ranked together"
        embeddings = " and the embeddings" if self.prune_embeddings else ""
        return f"the fraction of the prunable weights (Linear weight matrices{embeddings}) masked to zero, in {where}"

    def __init__(
        self,
        sparsity: float = 0.0,
        prune_embeddings: bool = False,
        scope: str = "per_matrix",
        criterion: WeightCriterion | str = "magnitude",
    ):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
        if scope not in ("per_matrix", "global"):
            raise UserError(f"pruner.scope must be per_matrix or global, got {scope!r}")
        self.sparsity = sparsity
        self.prune_embeddings = prune_embeddings
        self.scope = scope
        self.criterion = resolve(criterion, WEIGHT_CRITERIA, WeightCriterion)  # type: ignore[type-abstract]
        self._weights: dict[str, nn.Parameter] = {}
        self.progress = Progress()  # the round's one-off step events (gradual methods, θ_t capture)

    def attach(self, model: nn.Module) -> None:
        """Register an all-ones mask buffer per prunable weight matrix."""
        self._weights = prunable_weights(model, self.prune_embeddings)
        for name, w in self._weights.items():
            if not hasattr(self, mask_buffer(name)):
                self.register_buffer(mask_buffer(name), torch.ones_like(w, requires_grad=False))

    def round_sparsity(self, round_idx: int) -> float:
        return self.sparsity

    def checkpoint_state(self) -> dict[str, Any]:
        return {"progress": self.progress.state()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.progress = Progress.from_state(state.get("progress"))

    # --- the score seam --------------------------------------------------------------------------------
    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        """{prunable parameter name: tensor of its shape}; higher = more worth keeping: the criterion's scores of the
        prunable weights, given the current masks. Signed scores rank as they are (no abs here): magnitude is |w|."""
        # under FSDP2 (hardware=fsdp) each rank gathers the whole matrices, so every rank ranks the same weights
        return self.criterion({n: gathered(w) for n, w in self._weights.items()}, self.masks)

    @torch.no_grad()
    def prune_to(self, model: nn.Module, sparsity: float) -> None:
        """Mask the lowest-scoring weights so that exactly round(sparsity * n) are masked (per matrix, or over
        all matrices with scope=global); masked entries never come back. Then check DDP ranks and apply."""
        new = keep_top(self.scores(model), self.masks, sparsity, self.scope)
        for name, m in new.items():
            getattr(self, mask_buffer(name)).copy_(m)
        self.rank_checks += check_ranks_agree(self.masks, sparsity)
        self.apply_masks()

    # --- masks ---------------------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, Tensor]:
        return {name: getattr(self, mask_buffer(name)) for name in self._weights}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the masked weights in place; under FSDP2 each rank its own rows of every matrix (the masks are whole
        and the same on every rank: no communication)."""
        if self._weights:
            weights, masks = list(self._weights.values()), list(self.masks.values())
            if is_sharded(weights[0]):  # FSDP2: this rank's rows of each matrix
                masks = [local_rows(m, w) for w, m in zip(weights, masks, strict=True)]
                weights = [local_part(w) for w in weights]
            torch._foreach_mul_(weights, masks)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of masked weights so that Adam's moments do not accumulate for them."""
        pairs = [
            (w.grad, m) for w, m in zip(self._weights.values(), self.masks.values(), strict=True) if w.grad is not None
        ]
        if pairs and is_sharded(pairs[0][0]):  # FSDP2: this rank's rows of each gradient
            pairs = [(local_part(g), local_rows(m, g)) for g, m in pairs]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    # --- reporting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def masked_fraction(self) -> float:
        masks = list(self.masks.values())
        if not masks:
            return 0.0
        return 1.0 - sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict[str, Any]:
        """Sparsity (fraction of prunable weights masked), parameter counts, and memory: dense fp32 bytes versus
        the prunable matrices in CSC form, or as a bitmask plus kept values, with everything else dense."""
        weights = prunable_weights(model, self.prune_embeddings)
        masks = self.masks
        nonzero = {
            n: masks[n].bool() if n in masks else torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()
        }
        per_matrix = {n: 1.0 - nz.float().mean().item() for n, nz in nonzero.items()}
        prunable = sum(w.numel() for w in weights.values())
        remaining = sum(int(nz.sum()) for nz in nonzero.values())
        total = sum(p.numel() for p in model.parameters())
        prunable_csc = sum(csc_bytes(nz) for nz in nonzero.values())
        prunable_bitmask = sum(bitmask_bytes(nz) for nz in nonzero.values())
        rest = 4 * (total - prunable)  # everything unpruned stays dense fp32
        return {
            "sparsity": {
                "overall": 1.0 - remaining / prunable if prunable else 0.0,
                "per_matrix": per_matrix,
            },
            "params": {"total": total, "prunable": prunable, "remaining": remaining + (total - prunable)},
            # fp32 values; CSC = values + int32 row indices + int32 column pointers; bitmask = 1 bit per entry +
            # the kept values (+ the shape), the layout of `prunelab export` (models.sparse_format)
            "memory": {
                "prunable": {
                    "dense_bytes": 4 * prunable,
                    "csc_bytes": prunable_csc,
                    "bitmask_bytes": prunable_bitmask,
                },
                "model": {
                    "dense_bytes": 4 * total,
                    "csc_bytes": prunable_csc + rest,
                    "bitmask_bytes": prunable_bitmask + rest,
                },
            },
        }


class NoPruner(MaskPruner):
    """`pruner=none`: the dense baseline. It registers no masks, so training pays nothing; its report counts
    the prunable matrices (all kept) like any mask method's, so dense rows sit in the same tables."""

    def __init__(self) -> None:
        super().__init__(sparsity=0.0)

    @property
    def sparsity_means(self) -> str:
        return "not read: pruner=none keeps every weight"

    def attach(self, model: nn.Module) -> None:
        self._weights = {}
