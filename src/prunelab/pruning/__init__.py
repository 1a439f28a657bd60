from prunelab.pruning.base import NoPruner, Pruner
from prunelab.pruning.magnitude import MagnitudePruner

__all__ = ["MagnitudePruner", "NoPruner", "Pruner"]
