"""The Pruner strategy interface.

A pruner is an `nn.Module` owned by the task, so its masks (and any weight snapshots a method keeps,
such as θ_0 for lottery tickets) are buffers that land in every checkpoint and come back on resume.

The round driver and the task call it at fixed points:

    attach(model)                        once, before training or loading a checkpoint
    for round in range(rounds):          each round is a fresh `trainer.fit` (own optimizer, warm-up)
        on_round_start(model, round)     e.g. rewind surviving weights to θ_0 or θ_t
        every step:
            before the optimizer step:   mask_gradients()
            after the optimizer step:    on_step_end(model, step, total)  (gradual schedules prune here)
                                         then apply_masks(): masked weights are zeroed in place
        on_round_end(model, round)       e.g. compute the next mask from converged weights

Masks are applied in place after the optimizer step (no forward hooks, no weight copies).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunelab.distributed import rows_differing_across_ranks
from prunelab.errors import UserError
from prunelab.pruning.masks import csc_bytes, magnitude_masks, prunable_weights


def _key(param_name: str) -> str:
    return "mask__" + param_name.replace(".", "__")


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


class Pruner(nn.Module):
    rounds: int = 1  # how many `trainer.fit` rounds the method needs

    def __init__(self, sparsity: float = 0.0, prune_embeddings: bool = False, scope: str = "per_matrix"):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
        if scope not in ("per_matrix", "global"):
            raise UserError(f"pruner.scope must be per_matrix or global, got {scope!r}")
        self.sparsity = sparsity
        self.prune_embeddings = prune_embeddings
        self.scope = scope
        self._weights: dict[str, nn.Parameter] = {}
        self.rank_checks = 0  # pruning steps whose masks were compared across DDP ranks (all equal)

    # --- lifecycle -----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Register an all-ones mask buffer per prunable weight matrix."""
        self._weights = prunable_weights(model, self.prune_embeddings)
        for name, w in self._weights.items():
            if not hasattr(self, _key(name)):
                self.register_buffer(_key(name), torch.ones_like(w, requires_grad=False))

    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        """Called before each round's fit; iterative methods rewind weights here."""

    def on_batch(self, model: nn.Module, batch: dict) -> None:
        """Called with every training batch before the model's own step (AttendOut trains a second
        network on the same batches here)."""

    def use_initial_weights(self, state: dict[str, Tensor]) -> None:
        """Called when the run starts from a trained checkpoint (`ckpt=`) whose run saved θ_0 (init.pt):
        methods that rewind to θ_0 take that run's initialisation instead of this run's."""

    def use_data(self, datamodule: object) -> None:
        """Called once before the first round; pruners that score with data (head importance) keep it."""

    def checkpoint_state(self) -> dict[str, Any]:
        """State that is not in the module's buffers (e.g. auxiliary networks' optimizers), saved in every
        checkpoint as `pruner_state`; tensors and plain containers only (checkpoints load weights_only)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Take back what checkpoint_state gave (called when a checkpoint is loaded)."""

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        """Training steps of round `round_idx` (0: the round only evaluates the weights it starts from).
        `pretrained`: the run started from a trained checkpoint (`ckpt=`)."""
        return max_steps

    def stage(self, round_idx: int) -> str | None:
        """A name for what round `round_idx` holds (e.g. "pruned"), shown with its level in results.json."""
        return None

    def enter_round(self, round_idx: int) -> None:
        """Called instead of on_round_start when a round resumes from its checkpoint (nothing to rewind)."""

    def round_sparsity(self, round_idx: int) -> float:
        """The sparsity round `round_idx` ends at."""
        return self.sparsity

    def same_as_targeting(self, round_idx: int) -> bool:
        """Whether round `round_idx`'s result equals a run of this method targeting that round's sparsity."""
        return round_idx == self.rounds - 1

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimizer step, before the masks are applied; gradual methods prune here."""

    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        """Called after each round's fit; iterative methods compute the next mask here."""

    def mask_is_final(self, step: int, total_steps: int) -> bool:
        """True once the mask of this round will not change any more (checkpoints are chosen only then)."""
        return True

    # --- masks ---------------------------------------------------------------------------------------
    @property
    def masks(self) -> dict[str, Tensor]:
        return {name: getattr(self, _key(name)) for name in self._weights}

    @torch.no_grad()
    def apply_masks(self) -> None:
        if self._weights:
            torch._foreach_mul_(list(self._weights.values()), list(self.masks.values()))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of masked weights so that Adam's moments do not accumulate for them."""
        pairs = [
            (w.grad, m) for w, m in zip(self._weights.values(), self.masks.values(), strict=True) if w.grad is not None
        ]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])

    @torch.no_grad()
    def prune_by_magnitude(self, sparsity: float) -> None:
        """Set masks to keep the largest-|w| weights at `sparsity` (per matrix or global), then apply."""
        new = magnitude_masks(dict(self._weights), self.masks, sparsity, self.scope)
        for name, m in new.items():
            getattr(self, _key(name)).copy_(m)
        self.rank_checks += check_ranks_agree(self.masks, sparsity)
        self.apply_masks()

    # --- reporting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def masked_fraction(self) -> float:
        """Fraction of the prunable weights masked (0 for a pruner without masks); cheap enough per eval."""
        masks = list(self.masks.values())
        if not masks:
            return 0.0
        return 1.0 - sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict:
        """Sparsity (fraction of prunable weights masked), parameter counts, and memory: dense fp32 bytes
        versus the prunable matrices in CSC form plus everything else dense."""
        weights = prunable_weights(model, self.prune_embeddings)
        masks = self.masks
        nonzero = {
            n: masks[n].bool() if n in masks else torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()
        }
        per_matrix = {n: 1.0 - nz.float().mean().item() for n, nz in nonzero.items()}
        prunable = sum(w.numel() for w in weights.values())
        remaining = sum(int(nz.sum()) for nz in nonzero.values())
        total = sum(p.numel() for p in model.parameters())
        prunable_csc = sum(csc_bytes(nz) for nz in nonzero.values())
        rest = 4 * (total - prunable)  # everything unpruned stays dense fp32
        return {
            "sparsity": {
                "overall": 1.0 - remaining / prunable if prunable else 0.0,
                "per_matrix": per_matrix,
            },
            "params": {"total": total, "prunable": prunable, "remaining": remaining + (total - prunable)},
            "memory": {  # fp32 values; CSC = values + int32 row indices + int32 column pointers
                "prunable": {"dense_bytes": 4 * prunable, "csc_bytes": prunable_csc},
                "model": {"dense_bytes": 4 * total, "csc_bytes": prunable_csc + rest},
            },
        }


class NoPruner(Pruner):
    """`pruner=none`: the dense baseline. Registers no masks, so training pays nothing."""

    def __init__(self) -> None:
        super().__init__(sparsity=0.0)

    def attach(self, model: nn.Module) -> None:
        self._weights = {}
