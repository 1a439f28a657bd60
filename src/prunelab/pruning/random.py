"""Random pruning: the control every lottery-ticket paper reports. The same gradual schedule as MP, but the
weights that go are chosen at random (among those still kept) instead of by magnitude: MP handed the seeded
random weight criterion (prunelab.criteria.weights.RandomScore). With `pattern=N:M` the draws go through MP's N:M
protection, so the schedule ends at an exact random N:M mask (before, the draws were ranked over whole matrices and
the mask was not N:M: a silent wrong pattern)."""

from __future__ import annotations

from prunelab.criteria.weights import RandomScore
from prunelab.pruning.magnitude import MagnitudePruner


class RandomPruner(MagnitudePruner):
    def __init__(self, sparsity: float, seed: int = 0, **schedule: object):
        # seeded by the run's seed: the same draw on every DDP rank and after a resume
        super().__init__(sparsity=sparsity, criterion=RandomScore(seed), **schedule)  # type: ignore[arg-type]
        self.seed = seed
