"""BLEU checked against sacrebleu and against an independent implementation of Papineni et al. (2002)."""

import math
from collections import Counter

import pytest
import sacrebleu

from prunelab.metrics import translation_scores

HYPS = [
    "the cat sat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "hello there general kenobi",
    "no overlap whatsoever here",
]
REFS = [
    "the cat is sitting on the mat",
    "the quick brown fox jumps over the lazy dog",
    "hello there general kenobi",
    "something else entirely different",
]


def reference_bleu(hyps: list[str], refs: list[str], max_n: int = 4) -> float:
    """Corpus BLEU by the definition: clipped n-gram precisions summed over the corpus, geometric mean,
    brevity penalty exp(1 - r/c) when c < r. Strings are already tokenized (no punctuation)."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for h, r in zip(hyps, refs, strict=True):
        hw, rw = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(hw), ref_len + len(rw)
        for n in range(1, max_n + 1):
            hc = Counter(tuple(hw[i : i + n]) for i in range(len(hw) - n + 1))
            rc = Counter(tuple(rw[i : i + n]) for i in range(len(rw) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(hw) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_prec = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_prec)


def test_bleu_matches_definition_and_sacrebleu() -> None:
    scores = translation_scores(HYPS, REFS)
    assert scores.bleu == pytest.approx(reference_bleu(HYPS, REFS), abs=1e-9)
    assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-12)
    assert 0 < scores.bleu < 100
    assert "nrefs:1" in scores.bleu_signature and "tok:13a" in scores.bleu_signature


def test_perfect_and_empty_translations() -> None:
    assert translation_scores(REFS, REFS).bleu == pytest.approx(100.0)
    assert translation_scores(REFS, REFS).ter == pytest.approx(0.0)
    assert translation_scores([""] * len(REFS), REFS).bleu == 0.0


def test_ter_matches_sacrebleu() -> None:
    assert translation_scores(HYPS, REFS).ter == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)


def test_length_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="3 hypotheses for 4 references"):
        translation_scores(HYPS[:3], REFS)
