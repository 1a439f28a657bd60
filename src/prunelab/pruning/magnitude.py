"""Gradual magnitude pruning (Zhu & Gupta 2017), the MP baseline of Brix et al. (2020)."""

from __future__ import annotations

from torch import nn

from prunelab.errors import UserError
from prunelab.pruning.base import Pruner
from prunelab.pruning.schedule import cubic_sparsity, is_pruning_step, pruning_window


class MagnitudePruner(Pruner):
    """Prunes the smallest-magnitude weights every `frequency` steps, following the cubic schedule from
    `initial_sparsity` at the start step to `sparsity` at the end step, then trains on with the final
    mask. Start and end are steps, or fractions of the round's steps when the step is not given."""

    def __init__(
        self,
        sparsity: float,
        initial_sparsity: float = 0.0,
        frequency: int = 100,
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
        if frequency < 1:
            raise UserError(f"pruner.frequency must be >= 1, got {frequency}")
        if not 0.0 <= start_fraction <= end_fraction <= 1.0:
            raise UserError(f"need 0 <= start_fraction <= end_fraction <= 1, got {start_fraction}, {end_fraction}")
        self.initial_sparsity = initial_sparsity
        self.frequency = frequency
        self.start_fraction, self.end_fraction = start_fraction, end_fraction
        self.start_step, self.end_step = start_step, end_step

    def window(self, total_steps: int) -> tuple[int, int]:
        return pruning_window(total_steps, self.start_fraction, self.end_fraction, self.start_step, self.end_step)

    def target_at(self, step: int, total_steps: int) -> float:
        return cubic_sparsity(step, self.initial_sparsity, self.sparsity, *self.window(total_steps))

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        start, end = self.window(total_steps)
        if is_pruning_step(step, start, end, self.frequency):
            self.prune_by_magnitude(self.target_at(step, total_steps))

    def mask_is_final(self, step: int, total_steps: int) -> bool:
        return step >= self.window(total_steps)[1]
