"""Corpus-level translation metrics, computed by sacrebleu on detokenized text."""

from __future__ import annotations

from dataclasses import dataclass

import sacrebleu


@dataclass
class TranslationScores:
    bleu: float
    ter: float
    bleu_signature: str
    ter_signature: str


def translation_scores(hypotheses: list[str], references: list[str]) -> TranslationScores:
    """Corpus BLEU (Papineni et al. 2002) and TER with sacrebleu's default settings (13a tokenization,
    exponential smoothing off for corpus BLEU), one reference per sentence."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu, ter = sacrebleu.metrics.BLEU(), sacrebleu.metrics.TER()
    return TranslationScores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        ter=ter.corpus_score(hypotheses, [references]).score,
        bleu_signature=str(bleu.get_signature()),
        ter_signature=str(ter.get_signature()),
    )
