"""Gradual magnitude pruning (Zhu & Gupta 2017), the MP baseline of Brix et al. (2020)."""

from __future__ import annotations

from torch import nn

from prunelab.errors import UserError
from prunelab.pruning.base import MaskPruner
from prunelab.pruning.schedule import GradualSchedule


class MagnitudePruner(MaskPruner):
    """Prunes the lowest-scoring (smallest-magnitude) weights every `frequency` steps, following the cubic
    schedule from `initial_sparsity` at the start step to `sparsity` at the end step, then trains on with the
    final mask. Start and end are steps, or fractions of the round's steps when the step is not given."""

    def __init__(
        self,
        sparsity: float,
        initial_sparsity: float = 0.0,
        frequency: int = 50,
        start_fraction: float = 0.2,
        end_fraction: float = 0.7,
        start_step: int | None = None,
        end_step: int | None = None,
        scope: str = "per_matrix",
        prune_embeddings: bool = False,
    ):
        super().__init__(sparsity=sparsity, prune_embeddings=prune_embeddings, scope=scope)
        if not 0.0 <= initial_sparsity <= sparsity:
            raise UserError(f"pruner.initial_sparsity must be in [0, sparsity={sparsity}], got {initial_sparsity}")
        self.initial_sparsity = initial_sparsity
        self.schedule = GradualSchedule(frequency, start_fraction, end_fraction, start_step, end_step)

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        target = self.schedule.due(step, total_steps, self.initial_sparsity, self.sparsity, self.progress)
        if target is not None:
            self.prune_to(model, target)

    def mask_is_final(self, step: int, total_steps: int) -> bool:
        return self.progress.final_done
