"""What the importance studies score a model by, chosen by the task (never by asking the model's kind):
`TranslationTask.scorer` gives corpus BLEU over beam-search decodes (prunelab's GNMT beam, `BleuScorer`, or an
imported checkpoint's own decoding, `GenerateBleuScorer`), `ClassificationTask.scorer` accuracy in percent (on
the same 0-100 scale), `LanguageModelingTask.scorer` the negated perplexity (`PerplexityScorer`). The head and
component studies, the component pruner and the importance tracker all take a Scorer; `group_ablation` scores
components zeroed cumulatively with one (Wang & Tu's Figure 9).

Scoring floor: above criteria/, below pruning/, callbacks/ and tasks/ (the tasks choose a Scorer, never the reverse)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from prunelab.criteria.ablation import gates_off
from prunelab.data.tokenizer import Tokenizer
from prunelab.hf.generation import Generation, generate
from prunelab.metrics import bleu, perplexity
from prunelab.models.addressing import component_names
from prunelab.models.causal_lm import IGNORE
from prunelab.models.transformer import Transformer
from prunelab.scoring.scores import accuracy, corpus_bleu
from prunelab.scoring.variants import (
    AblationResult,
    DecodeSettings,
    ablation_accuracy,
    ablation_bleu,
    exact_ablation,
    variant_accuracy,
    variants_bleu,
)

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


class FullPassScorer(ABC):
    """A scorer whose every variant and ablation is a full pass of `score` (exact drops, nothing stopped early)."""

    @abstractmethod
    def score(self, model: Transformer, batches: Sequence[Batch]) -> float: ...

    def variants(
        self, model: Transformer, batches: Sequence[Batch], variants: Sequence[frozenset[str]]
    ) -> tuple[list[float], int]:
        scores = []
        for zeroed in variants:
            with gates_off(model, zeroed):
                scores.append(self.score(model, batches))
        return scores, len(variants) * len(batches)

    def ablation(
        self,
        model: Transformer,
        batches: Sequence[Batch],
        names: Sequence[str] | None = None,
        stop_below: float | None = 0.1,
        progress: Callable[[int, int], None] | None = None,
    ) -> AblationResult:
        names = list(names if names is not None else component_names(model))
        examples = sum(len(b["src"]) for b in batches)
        return exact_ablation(model, names, lambda: self.score(model, batches), examples, len(batches), progress)


@dataclass
class GenerateBleuScorer(FullPassScorer):
    """Corpus BLEU of the translations an imported checkpoint's own decoding gives (`generate` with its
    Generation: Hugging Face's beam search and length rules), so that a study of such a run starts from the BLEU
    the run reported. Every variant and ablation is decoded in full, one after another: exact drops, no early
    stopping (`stop_below` is ignored), and slower than BleuScorer's side-by-side decoding."""

    tokenizer: Tokenizer
    generation: Generation
    name: str = "BLEU"

    @torch.no_grad()
    def score(self, model: Transformer, batches: Sequence[Batch]) -> float:
        was_training = model.training
        model.eval()
        hyps: list[str] = []
        refs: list[str] = []
        try:
            for b in batches:
                hyps += [self.tokenizer.decode(h) for h in generate(model, b["src"], self.generation)]
                refs += list(b["ref"])
        finally:
            model.train(was_training)
        return bleu(hyps, refs)


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
        return ablation_accuracy(model, batches, list(names if names is not None else component_names(model)))


@dataclass
class PerplexityScorer(FullPassScorer):
    """A language model's negated perplexity over the batches' scored targets (higher is better, as the studies
    rank; a component's drop is then the perplexity it adds). Every variant is a full pass: exact drops."""

    name: str = "-perplexity"

    @torch.no_grad()
    def score(self, model: Transformer, batches: Sequence[Batch]) -> float:
        was_training = model.training
        model.eval()
        nll, tokens = 0.0, 0
        try:
            for b in batches:
                nll += float(model.token_nll(b).double().sum())  # type: ignore[operator]
                tokens += int((b["target"] != IGNORE).sum())
        finally:
            model.train(was_training)
        return -perplexity(nll, tokens)


# --- group ablation (Wang & Tu 2020, Figure 9) -----------------------------------------------------------
def group_ablation(
    model: Transformer, batches: Sequence[Batch], scorer: Scorer, order: Sequence[str]
) -> list[tuple[int, str | None, float]]:
    """Zero components cumulatively along `order` (all prefixes scored side by side).
    -> [(count zeroed, component added, score)], starting at (0, None, unablated score)."""
    variants = [frozenset(order[:k]) for k in range(len(order) + 1)]
    bleu, _ = scorer.variants(model, batches, variants)
    return [(k, order[k - 1] if k else None, b) for k, b in enumerate(bleu)]


def greedy_group_ablation(
    model: Transformer, batches: Sequence[Batch], scorer: Scorer
) -> list[tuple[int, str | None, float]]:
    """Group ablation re-scored after each step: with the components chosen so far zeroed, zero next the
    one whose ablation costs least. One batched pass over the data per step."""
    names = component_names(model)
    chosen: list[str] = []
    points: list[tuple[int, str | None, float]] = []
    while len(chosen) < len(names):
        rest = [n for n in names if n not in chosen]
        variants = [frozenset(chosen)] + [frozenset([*chosen, n]) for n in rest]
        bleu, _ = scorer.variants(model, batches, variants)
        if not points:
            points.append((0, None, bleu[0]))
        best = max(range(len(rest)), key=lambda i: (bleu[i + 1], -i))
        chosen.append(rest[best])
        points.append((len(chosen), rest[best], bleu[best + 1]))
    return points
