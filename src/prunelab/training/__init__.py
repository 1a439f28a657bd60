"""The library side of a run: `train(cfg, out)`, the round loop, `load_run`, checkpoint and results I/O."""

from prunelab.training.load import LoadedRun, load_run
from prunelab.training.train import train

__all__ = ["LoadedRun", "load_run", "train"]
