"""Gradual magnitude pruning (Zhu & Gupta 2017), the MP baseline of Brix et al. (2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.criteria.base import WeightCriterion
from prunelab.errors import UserError
from prunelab.pruning.base import MaskPruner
from prunelab.pruning.schedule import GradualSchedule
from prunelab.pruning.solvers import check_groups, check_sparsity, nm_candidates, parse_pattern


class MagnitudePruner(MaskPruner):
    """Prunes the lowest-scoring weights (by `criterion`: the smallest magnitudes by default) every `frequency` steps,
    following the cubic schedule from `initial_sparsity` at the start step to `sparsity` at the end step, then trains
    on with the final mask. Start and end are steps, or fractions of the round's steps when the step is not given.

    `pattern="N:M"` (e.g. 2:4): only the M - N smallest weights of each group of M consecutive inputs may go, so the
    schedule ends (sparsity = 1 - N/M) at an exact N:M mask, comparable with one-shot N:M (pruner=oneshot)."""

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
        pattern: str = "unstructured",
        criterion: WeightCriterion | str = "magnitude",
    ):
        super().__init__(sparsity=sparsity, prune_embeddings=prune_embeddings, scope=scope, criterion=criterion)
        self.pattern = parse_pattern(pattern)
        check_sparsity(self.pattern, sparsity)
        if not 0.0 <= initial_sparsity <= sparsity:
            raise UserError(f"pruner.initial_sparsity must be in [0, sparsity={sparsity}], got {initial_sparsity}")
        self.initial_sparsity = initial_sparsity
        self.schedule = GradualSchedule(frequency, start_fraction, end_fraction, start_step, end_step)

    def attach(self, model: nn.Module) -> None:
        super().attach(model)
        for name, w in self._weights.items():
            check_groups(name, w.shape[1], self.pattern)

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        """The criterion's scores (|w| by default); under N:M, +inf for the N largest of each group (never pruned)."""
        scores = super().scores(model)
        if not self.pattern.structured:
            return scores
        masks = self.masks
        out = {}
        for n, s in scores.items():
            ranked = torch.where(masks[n].bool(), s, -1.0)  # masked entries count as the lowest of their group
            out[n] = torch.where(nm_candidates(ranked, self.pattern), s, torch.inf)
        return out

    def on_step_end(self, model: nn.Module, step: int, total_steps: int) -> None:
        target = self.schedule.due(step, total_steps, self.initial_sparsity, self.sparsity, self.progress)
        if target is not None:
            self.prune_to(model, target)

    def mask_is_final(self, step: int, total_steps: int) -> bool:
        return self.progress.final_done
