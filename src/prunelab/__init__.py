"""prunelab: pruning Transformers for translation and classification, on Lightning and Hydra."""

__version__ = "0.1.0"
