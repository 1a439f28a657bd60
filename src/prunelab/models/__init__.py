from prunelab.models.classifier import TransformerClassifier, build_classifier
from prunelab.models.hf_import import build_hf_encoder, load_hf_encoder  # reads files; imports no transformers
from prunelab.models.hf_marian import build_hf_marian, load_hf_marian
from prunelab.models.transformer import Transformer, TransformerConfig


def build_transformer(**kwargs: object) -> Transformer:
    """Hydra entry point: `model/*.yaml` holds TransformerConfig fields; vocab_size comes from the data."""
    return Transformer(TransformerConfig(**kwargs))  # type: ignore[arg-type]


__all__ = [
    "Transformer",
    "TransformerClassifier",
    "TransformerConfig",
    "build_classifier",
    "build_hf_encoder",
    "build_hf_marian",
    "build_transformer",
    "load_hf_encoder",
    "load_hf_marian",
]
