"""One score of a model over batches, every gate as it is: corpus BLEU of prunelab's beam-search decodes and
classification accuracy in percent (scoring floor: the module the variants and the Scorers build on).

BLEU is corpus BLEU from sacrebleu on detokenized beam-search output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prunelab.data.tokenizer import Tokenizer
from prunelab.metrics import bleu
from prunelab.models.decoding import beam_search
from prunelab.models.transformer import Transformer

Batch = dict[str, Any]


@torch.no_grad()
def corpus_bleu(
    model: Transformer, batches: Sequence[Batch], tok: Tokenizer, beam_size: int = 1, settings: Any = None
) -> float:
    """sacrebleu corpus BLEU of the model's translations of `batches`. `settings` (alpha, max_len_a,
    max_len_b attributes, e.g. a DecodeSettings) overrides the decoding defaults."""
    was_training = model.training
    model.eval()
    hyps, refs = [], []
    extra = {k: getattr(settings, k) for k in ("alpha", "max_len_a", "max_len_b")} if settings else {}
    for b in batches:
        out = beam_search(model, b["src"], tok.bos_id, tok.eos_id, beam_size=beam_size, **extra)
        hyps += [tok.decode(h) for h in out]
        refs += list(b["ref"])
    model.train(was_training)
    return bleu(hyps, refs)


@torch.no_grad()
def accuracy(model: Transformer, batches: Sequence[Batch]) -> float:
    """Classification accuracy in percent (so that it reads on the same 0-100 scale as BLEU)."""
    was_training = model.training
    model.eval()
    right = total = 0
    for b in batches:
        right += int((model(b["src"]).argmax(-1) == b["label"]).sum())
        total += len(b["label"])
    model.train(was_training)
    return 100.0 * right / max(total, 1)
