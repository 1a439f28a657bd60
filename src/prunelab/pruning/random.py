"""Random pruning: the control every lottery-ticket paper reports. The same gradual schedule as MP, but the
weights that go are chosen at random (among those still kept) instead of by magnitude."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from prunelab.pruning.magnitude import MagnitudePruner


class RandomPruner(MagnitudePruner):
    def __init__(self, sparsity: float, seed: int = 0, **schedule: object):
        super().__init__(sparsity=sparsity, **schedule)  # type: ignore[arg-type]
        self.seed = seed

    def scores(self, model: nn.Module) -> dict[str, Tensor]:
        # seeded by the run's seed and how much is masked already: the same draw on every DDP rank and after a
        # resume, and a fresh one at every pruning step
        masked = sum(int((m == 0).sum()) for m in self.masks.values())
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + masked)
        return {name: torch.rand(w.shape, generator=gen).to(w.device) for name, w in self._weights.items()}
