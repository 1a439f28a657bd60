"""What the importance studies score a model by, chosen by the task (never by asking the model's kind):
`TranslationTask.scorer` gives corpus BLEU over beam-search decodes, `ClassificationTask.scorer` accuracy in
percent (on the same 0-100 scale). The head and component studies, the component pruner and the importance
tracker all take a Scorer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prunelab.data.tokenizer import Tokenizer
from prunelab.importance.ablation import accuracy, corpus_bleu
from prunelab.importance.components import (
    AblationResult,
    DecodeSettings,
    ablation_accuracy,
    ablation_bleu,
    variant_accuracy,
    variants_bleu,
)
from prunelab.models.transformer import Transformer

Batch = dict[str, Any]


class Scorer(Protocol):
    name: str  # how reports and plots label the score

    def score(self, model: Transformer, batches: Sequence[Batch]) -> float: ...

    def variants(
        self, model: Transformer, batches: Sequence[Batch], variants: Sequence[frozenset[str]]
    ) -> tuple[list[float], int]:
        """The score with each set of components zeroed -> (scores, passes over the data)."""
        ...

    def ablation(
        self,
        model: Transformer,
        batches: Sequence[Batch],
        names: Sequence[str] | None = None,
        stop_below: float | None = 0.1,
        progress: Callable[[int, int], None] | None = None,
    ) -> AblationResult:
        """The score unablated and with each component zeroed (Wang & Tu's Eq. 1 inputs)."""
        ...


@dataclass
class BleuScorer:
    tokenizer: Tokenizer
    settings: DecodeSettings = field(default_factory=DecodeSettings)
    name: str = "BLEU"

    def score(self, model: Transformer, batches: Sequence[Batch]) -> float:
        return corpus_bleu(model, batches, self.tokenizer, self.settings.beam_size, self.settings)

    def variants(
        self, model: Transformer, batches: Sequence[Batch], variants: Sequence[frozenset[str]]
    ) -> tuple[list[float], int]:
        return variants_bleu(model, batches, self.tokenizer, self.settings, variants)

    def ablation(
        self,
        model: Transformer,
        batches: Sequence[Batch],
        names: Sequence[str] | None = None,
        stop_below: float | None = 0.1,
        progress: Callable[[int, int], None] | None = None,
    ) -> AblationResult:
        return ablation_bleu(
            model, batches, self.tokenizer, self.settings, names=names, stop_below=stop_below, progress=progress
        )


@dataclass
class AccuracyScorer:
    name: str = "accuracy (%)"

    def score(self, model: Transformer, batches: Sequence[Batch]) -> float:
        return accuracy(model, batches)

    def variants(
        self, model: Transformer, batches: Sequence[Batch], variants: Sequence[frozenset[str]]
    ) -> tuple[list[float], int]:
        return [variant_accuracy(model, batches, v) for v in variants], len(variants) * len(batches)

    def ablation(
        self,
        model: Transformer,
        batches: Sequence[Batch],
        names: Sequence[str] | None = None,
        stop_below: float | None = 0.1,
        progress: Callable[[int, int], None] | None = None,
    ) -> AblationResult:
        from prunelab.models.addressing import component_names

        return ablation_accuracy(model, batches, list(names if names is not None else component_names(model)))
