"""The causal language-modeling LightningModule: next-token cross-entropy, scored by perplexity with the protocol of
the pruning literature (the data module's windows: a split's text as one token stream cut into windows of
`data.seq_len` tokens, non-overlapping or strided; perplexity = exp of the mean negative log-likelihood over every
predicted token of the split). results.json records the protocol (`perplexity_protocol`; its `stream` says whether
the text was tokenized whole as the literature does, `joined`, or as documents each followed by EOS, `eos`).

Perplexity is lower-is-better, and prunelab's checkpoint selection, early stopping and importance studies rank
scores higher-is-better: the monitored value (`val/score_at_target`) and the studies' score are the negated
perplexity, while `val/ppl` and `test/ppl` are the perplexity itself."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from prunelab.data.tokenizer import Tokenizer
from prunelab.metrics import perplexity
from prunelab.models.causal_lm import IGNORE, CausalLM, nll_of
from prunelab.pruning.base import Pruner
from prunelab.scoring.scoring import PerplexityScorer
from prunelab.tasks.base import PrunableTask, gathered_by_index
from prunelab.tasks.recipe import Recipe

Batch = dict[str, Any]


class LanguageModelingTask(PrunableTask):
    kind = "language_modeling"
    score_key, score_name = "ppl", "perplexity"
    higher_is_better = False

    def __init__(
        self,
        model: CausalLM,
        pruner: Pruner,
        tokenizer: Tokenizer,
        protocol: dict[str, Any] | None = None,
        recipe: Recipe | None = None,
    ):
        super().__init__(model, pruner, recipe)
        self.tokenizer = tokenizer
        self.protocol = dict(protocol or {})
        self._outputs: list[tuple[int, float, int]] = []  # (window index, NLL sum, predicted tokens) of this eval

    def forward_logits(self, model: Any, batch: Batch) -> Tensor:
        return model(batch["src"])  # (B, T, V): next-token logits

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self.student_logits(batch)
        nll = nll_of(logits, batch["target"])  # (B, T), 0 where not scored
        keep = batch["target"] != IGNORE  # the predicted tokens the loss averages over; the KL too
        loss, parts = self.distilled(nll.sum() / keep.sum().clamp(min=1), logits, batch, keep, {"dec": keep})
        self.log_training_step(loss, batch, parts)
        return loss

    def _eval_step(self, batch: Batch) -> None:
        nll = self.model.token_nll(batch).double().sum(1)  # (B,) summed in float64: long splits add up exactly
        count = (batch["target"] != IGNORE).sum(1)
        for i, s, n in zip(batch["idx"].tolist(), nll.tolist(), count.tolist(), strict=True):
            self._outputs.append((i, s, n))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _score(self, split: str) -> None:
        records = gathered_by_index(self._outputs)
        nll = sum(s for _, s, _ in records)
        tokens = sum(n for _, _, n in records)
        ppl = perplexity(nll, tokens)
        scores = {"ppl": ppl, "nll": nll / tokens if tokens else math.nan, "tokens": tokens, "windows": len(records)}
        self.log(f"{split}/ppl", ppl, prog_bar=True, rank_zero_only=True)
        self.log(f"{split}/nll", scores["nll"], rank_zero_only=True)
        if split == "val":
            self.log_target(-ppl)  # higher is better for checkpoint selection
        self.last_eval[split] = {"hypotheses": [], "scores": scores}

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")

    @staticmethod
    def scorer(datamodule: Any, settings: Any = None) -> Any:
        """Negated perplexity (higher is better, as the studies rank); nothing is decoded."""
        return PerplexityScorer()

    def run_report(self) -> dict[str, Any]:
        return {**super().run_report(), "perplexity_protocol": self.protocol}
