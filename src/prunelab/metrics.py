"""Corpus-level metrics (ground floor: no prunelab imports): translation metrics, computed by sacrebleu on
detokenized text, and a language model's perplexity.

What NMT papers report, each with sacrebleu's signature so that a number says how it was computed:

- `bleu`: sacreBLEU with its defaults (13a tokenization, mixed case) -- the WMT-style figure;
- `bleu_lc`: BLEU, lowercased, 13a-tokenized (`sacrebleu -lc`). Small-corpus papers (Multi30k, IWSLT) report
  multi-bleu.perl on Moses-tokenized, lowercased text; prunelab has no Moses tokenizer, so this is the nearest
  figure sacrebleu computes by itself: comparable in spirit to tokenized-lowercase BLEU, *not* identical to
  multi-bleu.perl on Moses tokens (13a and Moses split some punctuation, hyphens and apostrophes differently);
- `chrf`: chrF2 (Popović 2015; character 6-grams, beta 2, no word n-grams), sacrebleu's CHRF defaults;
- `ter`: TER with sacrebleu's defaults.

`perplexity`: exp of the mean negative log-likelihood over the predicted tokens, as the pruning literature reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sacrebleu


@dataclass
class TranslationScores:
    bleu: float  # sacreBLEU, 13a tokenization, mixed case
    ter: float
    bleu_signature: str
    ter_signature: str
    chrf: float = float("nan")  # chrF2, sacrebleu's CHRF defaults
    chrf_signature: str = ""
    bleu_lc: float = float("nan")  # BLEU, lowercased, 13a-tokenized (sacrebleu -lc)
    bleu_lc_signature: str = ""


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacreBLEU alone (default settings, as `translation_scores(...).bleu`), for analyses that score many
    decodes and need no other metric."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.metrics.BLEU().corpus_score(hypotheses, [references]).score)


def translation_scores(hypotheses: list[str], references: list[str]) -> TranslationScores:
    """Corpus scores with sacrebleu, one reference per sentence:

    - BLEU (Papineni et al. 2002) with sacrebleu's default settings (13a tokenization, mixed case);
    - TER with sacrebleu's defaults;
    - chrF2 (sacrebleu's CHRF defaults: character 6-grams, beta 2);
    - BLEU, lowercased, 13a-tokenized (`sacrebleu -lc`, `BLEU(lowercase=True)`): the stand-in for the
      tokenized-lowercase BLEU (multi-bleu.perl on Moses tokens) of Multi30k/IWSLT papers, not identical to it.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    refs = [references]
    bleu, ter = sacrebleu.metrics.BLEU(), sacrebleu.metrics.TER()
    chrf, bleu_lc = sacrebleu.metrics.CHRF(), sacrebleu.metrics.BLEU(lowercase=True)
    return TranslationScores(
        bleu=bleu.corpus_score(hypotheses, refs).score,
        ter=ter.corpus_score(hypotheses, refs).score,
        bleu_signature=str(bleu.get_signature()),
        ter_signature=str(ter.get_signature()),
        chrf=chrf.corpus_score(hypotheses, refs).score,
        chrf_signature=str(chrf.get_signature()),
        bleu_lc=bleu_lc.corpus_score(hypotheses, refs).score,
        bleu_lc_signature=str(bleu_lc.get_signature()),
    )


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(mean NLL) over `tokens` predicted tokens (inf when the mean overflows; nan for no tokens)."""
    if tokens == 0:
        return math.nan
    mean = nll_sum / tokens
    return math.exp(mean) if mean < 700 else math.inf
