"""The NMT LightningModule: label-smoothed cross-entropy and beam-search evaluation scored with sacrebleu
(the optimizer and schedule are the Recipe it is handed, the Pruner plumbing is PrunableTask's).

Two decoders (`decoding`): `prunelab`, prunelab's GNMT beam search (`beam_size`, `length_penalty` alpha, at most
`max_len_a` * |src| + `max_len_b` tokens), and `checkpoint`, an imported checkpoint's own decoding as transformers'
`generate` gives it (prunelab.hf.generation: its generation_config.json, `generation` overriding settings), for
validation and test alike. `auto` (the default) is `checkpoint` for a model that carries generation settings (an
imported MarianMT model) and `prunelab` for any other. results.json records the decoding in force (`decoding`).
With a multilingual checkpoint's tokenizer the checkpoint's decoding forces its target language code as the first
token (transformers' forced_bos_token_id), as one calls `generate` for mBART-50, M2M100 and NLLB."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from prunelab.data.tokenizer import Tokenizer
from prunelab.errors import UserError
from prunelab.hf.generation import Generation, checkpoint_decoding, generate, with_beams, with_target_code
from prunelab.metrics import translation_scores
from prunelab.models.decoding import beam_search
from prunelab.models.transformer import Transformer
from prunelab.pruning.base import Pruner
from prunelab.scoring.scoring import BleuScorer, GenerateBleuScorer
from prunelab.scoring.variants import DecodeSettings
from prunelab.tasks.base import PrunableTask, gathered_by_index
from prunelab.tasks.recipe import Recipe

Batch = dict[str, Any]


def forcing_target_code(generation: Generation | None, tokenizer: Tokenizer) -> Generation | None:
    """`generation` forcing the tokenizer's target language code as the first token (hf.generation.with_target_code);
    as it is for a tokenizer without one; None (prunelab's beam search) stays None, and is one error with a code."""
    code_id = getattr(tokenizer, "target_code_id", None)
    if generation is None:
        if code_id is not None:  # prunelab's beam search has no forced first token: it would pick any language
            raise UserError(
                f"task.decoding=prunelab cannot force the target language code {getattr(tokenizer, 'tgt_code', '')} "
                "as the first token (the multilingual checkpoint needs it): decode with task.decoding=checkpoint"
            )
        return None
    return with_target_code(generation, code_id, getattr(tokenizer, "tgt_code", None))


class TranslationTask(PrunableTask):
    kind = "translation"
    score_key, score_name = "bleu", "BLEU"
    monitor = "val/bleu_at_target"

    def __init__(
        self,
        model: Transformer,
        pruner: Pruner,
        tokenizer: Tokenizer,
        label_smoothing: float = 0.1,
        beam_size: int = 4,
        val_beam_size: int | None = None,
        length_penalty: float = 0.6,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
        decoding: str = "auto",
        generation: dict[str, Any] | None = None,
        recipe: Recipe | None = None,
    ):
        super().__init__(model, pruner, recipe)
        self.tokenizer = tokenizer
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size
        self.val_beam_size = val_beam_size or beam_size
        self.length_penalty, self.max_len_a, self.max_len_b = length_penalty, max_len_a, max_len_b
        # None: prunelab's beam search; a checkpoint's own decoding starts its translations with the target language
        # code of a multilingual tokenizer (mBART-50, M2M100, NLLB), as generate(forced_bos_token_id=...) does
        self.generation = forcing_target_code(checkpoint_decoding(model, decoding, generation), tokenizer)
        self._outputs: list[tuple[int, str, str]] = []  # (index, hypothesis, reference) of this eval epoch

    def eval_cost_ratio(self) -> float:
        if self.generation is not None:
            return 1.0  # validation and test decode alike
        return self.beam_size / self.val_beam_size  # beam search costs about its width

    def decoding(self) -> dict[str, Any]:
        """The decoding in force, as results.json records it: the checkpoint's settings, or prunelab's beam."""
        if self.generation is not None:
            return self.generation.report()
        return {
            "decoder": "prunelab",
            "algorithm": "gnmt_beam_search",
            "beam_size": self.beam_size,
            "val_beam_size": self.val_beam_size,
            "length_penalty": self.length_penalty,  # GNMT alpha: ((5 + |Y|) / 6) ** alpha
            "max_len_a": self.max_len_a,
            "max_len_b": self.max_len_b,
        }

    # --- training --------------------------------------------------------------------------------
    def forward_logits(self, model: Any, batch: Batch) -> Tensor:
        return model(batch["src"], batch["tgt_in"])  # (B, T, V)

    def token_loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Label-smoothed cross-entropy of `logits` (B, T, V) against tgt_out, averaged over its non-pad tokens."""
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            batch["tgt_out"].flatten(),
            ignore_index=self.tokenizer.pad_id,
            label_smoothing=self.label_smoothing,
        )

    def loss(self, batch: Batch) -> Tensor:
        return self.token_loss(self.forward_logits(self.model, batch), batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self.student_logits(batch)
        pad = self.tokenizer.pad_id
        keep = batch["tgt_out"] != pad  # the tokens the task loss averages over; the KL too
        masks = {"enc": batch["src"] != pad, "dec": keep}  # the layer outputs that count, per stack
        loss, parts = self.distilled(self.token_loss(logits, batch), logits, batch, keep, masks)
        self.log_training_step(loss, batch, parts)
        return loss

    # --- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: Batch, split: str, beam: int) -> None:
        self.log(f"{split}/loss", self.loss(batch), sync_dist=True, batch_size=len(batch["ref"]))
        if self.generation is not None:
            hyps = generate(self.model, batch["src"], self.generation)
        else:
            hyps = self.gnmt_beam(batch, beam)
        for i, h, r in zip(batch["idx"].tolist(), hyps, batch["ref"], strict=True):
            self._outputs.append((i, self.tokenizer.decode(h), r))

    def gnmt_beam(self, batch: Batch, beam: int) -> list[list[int]]:
        """prunelab's beam search (task.decoding=prunelab) of a batch's sources."""
        return beam_search(
            self.model,
            batch["src"],
            self.tokenizer.bos_id,
            self.tokenizer.eos_id,
            beam_size=beam,
            alpha=self.length_penalty,
            max_len_a=self.max_len_a,
            max_len_b=self.max_len_b,
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_beam_size)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.beam_size)

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _score(self, split: str) -> None:
        records = gathered_by_index(self._outputs)
        hyps = [h for _, h, _ in records]
        refs = [r for _, _, r in records]
        scores = translation_scores(hyps, refs)
        self.log(f"{split}/bleu", scores.bleu, prog_bar=True)
        self.log(f"{split}/ter", scores.ter)
        self.log(f"{split}/chrf", scores.chrf)  # chrF2
        self.log(f"{split}/bleu_lc", scores.bleu_lc)  # BLEU, lowercased, 13a-tokenized (sacrebleu -lc)
        if split == "val":
            self.log_target(scores.bleu)
        self.last_eval[split] = {"hypotheses": hyps, "scores": scores}

    @staticmethod
    def scorer(datamodule: Any, settings: Any = None) -> Any:
        """Corpus BLEU of beam-search decodes. `settings`: a DecodeSettings (prunelab's beam: width, length penalty,
        length limits) or a Generation (a checkpoint's own decoding, as `generate` does it)."""
        if isinstance(settings, Generation):
            return GenerateBleuScorer(datamodule.tokenizer, forcing_target_code(settings, datamodule.tokenizer))
        return BleuScorer(datamodule.tokenizer, settings or DecodeSettings())

    def own_scorer(self, datamodule: Any, settings: Any = None) -> Any:
        """The scorer of a run that decodes with its checkpoint's settings decodes with them too (the beam width
        of `settings` when given); otherwise prunelab's beam with `settings`."""
        if self.generation is None:
            return self.scorer(datamodule, settings)
        beams = settings.beam_size if settings is not None else self.generation.num_beams
        return self.scorer(datamodule, with_beams(self.generation, beams))

    def run_report(self) -> dict[str, Any]:
        """The decoding in force (`decoding`) and sacrebleu's signatures of the test scores (none when every round
        was loaded from a finished run): BLEU, TER, chrF and the lowercased BLEU (`bleu_lc`)."""
        scores = self.last_eval.get("test", {}).get("scores")
        if scores is None:
            return {**super().run_report(), "decoding": self.decoding()}
        return {
            **super().run_report(),
            "decoding": self.decoding(),
            "bleu_signature": scores.bleu_signature,
            "ter_signature": scores.ter_signature,
            "chrf_signature": scores.chrf_signature,
            "bleu_lc_signature": scores.bleu_lc_signature,
        }

    def on_validation_epoch_end(self) -> None:
        self._score("val")

    def on_test_epoch_end(self) -> None:
        self._score("test")
