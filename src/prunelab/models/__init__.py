from prunelab.models.classifier import TransformerClassifier, build_classifier
from prunelab.models.transformer import Transformer, TransformerConfig


def build_transformer(**kwargs: object) -> Transformer:
    """Hydra entry point: `model/*.yaml` holds TransformerConfig fields; vocab_size comes from the data."""
    return Transformer(TransformerConfig(**kwargs))  # type: ignore[arg-type]


__all__ = [
    "Transformer",
    "TransformerClassifier",
    "TransformerConfig",
    "build_classifier",
    "build_transformer",
]
