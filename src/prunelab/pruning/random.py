"""Random pruning: the control every lottery-ticket paper reports. The same gradual schedule as MP, but the
weights that go are chosen at random (among those still kept) instead of by magnitude: MP handed the seeded
random weight criterion (prunelab.criteria.weights.RandomScore)."""

from __future__ import annotations

from torch import Tensor, nn

from prunelab.criteria.weights import RandomScore
from prunelab.pruning.base import MaskPruner
from prunelab.pruning.magnitude import MagnitudePruner


class RandomPruner(MagnitudePruner):
    def __init__(self, sparsity: float, seed: int = 0, **schedule: object):
        # seeded by the run's seed: the same draw on every DDP rank and after a resume
        super().__init__(sparsity=sparsity, criterion=RandomScore(seed), **schedule)  # type: ignore[arg-type]
        self.seed = seed

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        # the draws as they are, without MagnitudePruner's N:M protection: random pruning has always ranked its draws
        # over whole matrices, pattern=N:M included (kept so that its runs compute what they did)
        return MaskPruner.scores(self, model)
