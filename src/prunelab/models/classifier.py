"""An encoder-only Transformer classifier: the same encoder blocks, gates and addresses as the NMT model
(`enc.{i}.sa`, `enc.{i}.ff`, heads `enc.{i}.sa.h{j}`), a pooled sentence vector and a linear head.

The data put a [CLS] token (id BOS) first; pooling=cls reads its final state, pooling=mean averages the
states of the real (unpadded) tokens. An optional pooler (`pooler="tanh"`: BERT's Linear + tanh) transforms the
pooled vector before the head; imported checkpoints use it for their classification layers (prunelab.hf.encoders)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.models.kernels import Dropout
from prunelab.models.transformer import ACTIVATIONS, Transformer, TransformerConfig

POOLINGS = ("cls", "mean")
# The pooler's non-linearity: tanh for BERT and RoBERTa, exact GELU for ELECTRA, ReLU for DistilBERT.
POOLER_ACTIVATIONS = {"tanh": torch.tanh, **ACTIVATIONS}


class TransformerClassifier(Transformer):
    kind = "classification"

    def __init__(
        self,
        cfg: TransformerConfig,
        num_classes: int,
        pooling: str = "cls",
        pooler: str | None = None,
        head_dropout: float | None = None,
        dropout_before_pooler: bool = False,
    ):
        if cfg.dec_layers != 0:
            raise ValueError("a classifier has no decoder: dec_layers must be 0")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooler is not None and pooler not in POOLER_ACTIVATIONS:
            raise ValueError(f"pooler must be null or one of {sorted(POOLER_ACTIVATIONS)}, got {pooler!r}")
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        super().__init__(cfg)
        self.pooling = pooling
        self.num_classes = num_classes
        self.pooler_activation = pooler
        # BERT's pooler: pooled = dropout(act(W h + b)). Built only when asked, so that the default model's
        # parameters and random initialisation are what they were before the option existed.
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if pooler is not None else None
        if self.pooler is not None:
            nn.init.xavier_uniform_(self.pooler.weight)
            nn.init.zeros_(self.pooler.bias)
        # dropout after the pooler (`head_dropout`, default the model's), and before it too where the family's
        # classifier has one there (RoBERTa, ELECTRA: dropout -> dense -> act -> dropout -> out_proj)
        p = cfg.dropout if head_dropout is None else head_dropout
        self.pooler_drop = Dropout(p)
        self.pre_pooler_drop = Dropout(p) if dropout_before_pooler else None
        self.head = nn.Linear(cfg.d_model, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(  # type: ignore[override]
        self, src: Tensor, map_keep: Tensor | None = None, types: Tensor | None = None
    ) -> Tensor:
        """src (B, S) with [CLS] first -> class logits (B, num_classes). map_keep (B, layers): AttendOut's
        per-example keep/drop decisions for the attention maps (see Transformer.encode). types (B, S): token
        types (segment ids) for a model with `type_vocab_size`; None means type 0 everywhere."""
        mem, mask = self.encode(src, map_keep, types)  # (B, S, C), (B, 1, 1, S)
        if self.pooling == "cls":
            pooled = mem[:, 0]
        else:
            keep = mask[:, 0, 0, :, None].to(mem.dtype)  # (B, S, 1)
            pooled = (mem * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        if self.pooler is not None:  # (B, C) -> (B, C)
            assert self.pooler_activation is not None
            if self.pre_pooler_drop is not None:
                pooled = self.pre_pooler_drop(pooled)
            pooled = self.pooler_drop(POOLER_ACTIVATIONS[self.pooler_activation](self.pooler(pooled)))
        return self.head(pooled)

    def example_losses(self, batch: dict[str, Any]) -> Tensor:
        """Per-example cross-entropy L(x), (B,): what head importance differentiates."""
        logits = self(batch["src"], types=batch.get("types"))
        logits = logits.to(torch.promote_types(torch.float32, self.head.weight.dtype))
        return F.cross_entropy(logits, batch["label"], reduction="none")


def build_classifier(
    num_classes: int, pooling: str = "cls", pooler: str | None = None, **kwargs: Any
) -> TransformerClassifier:
    """Hydra entry point: `model/classifier_*.yaml`; vocab_size and num_classes come from the data.
    A `dec_layers` setting (from an experiment bundle written for NMT, e.g. smoke) does not apply."""
    kwargs.pop("dec_layers", None)
    return TransformerClassifier(TransformerConfig(dec_layers=0, **kwargs), num_classes, pooling, pooler)
