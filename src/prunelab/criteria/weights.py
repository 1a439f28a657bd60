"""Weight criteria: one score per entry of each prunable weight matrix, for the mask pruners (MP, the lottery-ticket
family, random pruning). Criteria floor: pure functions of the weights and masks they are given.

- `Magnitude` (`pruner.criterion=magnitude`, the default): |w| (Han et al. 2015; Zhu & Gupta 2017; Brix et al. 2020).
- `RandomScore(seed)`: uniform draws, the control every lottery-ticket paper reports (`pruner=random`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from prunelab.criteria.base import WeightCriterion


class Magnitude(WeightCriterion):
    """|w|: the smallest weights go first."""

    name = "magnitude"

    def __call__(self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {name: w.detach().abs() for name, w in weights.items()}


class RandomScore(WeightCriterion):
    """Uniform scores in [0, 1), drawn on the CPU from `seed` and how many entries are masked already: the same draw on
    every DDP rank and after a resume, and a fresh one at every pruning step."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        masked = sum(int((m == 0).sum()) for m in masks.values())
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + masked)
        return {name: torch.rand(w.shape, generator=gen).to(w.device) for name, w in weights.items()}


WEIGHT_CRITERIA: dict[str, type[WeightCriterion]] = {"magnitude": Magnitude}  # by name in `pruner.criterion`
