"""The BLEU bound that stops an ablation's decoding early (`BleuStats.upper_bound`), pinned by brute force.

Definition (prunelab.scoring.variants.ablation_bleu): some sentences of a corpus are translated (their
statistics `done`), the others are not yet (`rest_refs`: their references' statistics). The bound must be at least
the corpus BLEU that sacrebleu gives for EVERY way of translating the rest, brevity penalty included: a component
whose bound falls below the floor stops decoding, so a bound that is ever too low changes Eq. 1's scores.

The reference is independent of the bound's formula: over a vocabulary of three words, every hypothesis up to a
length limit is enumerated for the sentences still to translate and scored with `sacrebleu.corpus_bleu`. Where
the bound is attainable (the translated hypotheses are no shorter than their references, so the brevity penalty
of a perfect completion is 1, and the corpus has n-grams of every order), the best completion, the references
themselves, must reach it exactly.
"""

from __future__ import annotations

import itertools
import random

import pytest
import sacrebleu

from prunelab.scoring.variants import BleuStats

WORDS = ("a", "b", "c")


def completions(max_len: int) -> list[str]:
    """Every hypothesis over WORDS with 0..max_len words."""
    return [" ".join(w) for n in range(max_len + 1) for w in itertools.product(WORDS, repeat=n)]


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def brute_force(done_hyps: list[str], done_refs: list[str], rest_refs: list[str], max_len: int) -> list[float]:
    """sacrebleu's corpus BLEU of every completion: each sentence still to translate gets every hypothesis."""
    refs = [*done_refs, *rest_refs]
    options = completions(max_len)
    return [
        sacrebleu.corpus_bleu([*done_hyps, *tail], [refs]).score
        for tail in itertools.product(options, repeat=len(rest_refs))
    ]


def bound(done_hyps: list[str], done_refs: list[str], rest_refs: list[str]) -> float:
    bs = BleuStats()
    return bs.upper_bound(bs.of(done_hyps, done_refs), bs.of(rest_refs, rest_refs))


def attainable(done_hyps: list[str], done_refs: list[str], rest_refs: list[str]) -> bool:
    """A perfect completion reaches the bound: no brevity penalty, and n-grams of every order 1..4."""
    bs = BleuStats()
    stats = [a + b for a, b in zip(bs.of(done_hyps, done_refs), bs.of(rest_refs, rest_refs), strict=True)]
    return stats[0] >= stats[1] and all(t > 0 for t in stats[6:10])


def random_cases(n: int, seed: int = 0) -> list[tuple[list[str], list[str], list[str]]]:
    """Translated hypotheses of 0..7 words (often shorter than their references: a brevity penalty), references
    of 1..6 words (1..5 for the sentence still to translate)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        k = rng.randint(0, 2)
        done_refs = [sentence(rng, 1, 6) for _ in range(k)]
        done_hyps = [sentence(rng, 0, 7) for _ in range(k)]
        cases.append((done_hyps, done_refs, [sentence(rng, 1, 5)]))
    return cases


# hand-made cases where a wrong bound shows: short hypotheses (the brevity penalty: a completion LONGER than
# its reference scores more than the reference itself), nothing translated yet, and a corpus without 4-grams
HAND = [
    ([""], ["b c a b c a"], ["a b c a"]),  # done empty: "a a b c a" beats the reference itself (24.6 > 22.3)
    (["a"], ["a b c a b"], ["a b c a"]),  # done too short, the reference is the best completion
    ([], [], ["a b c a b"]),
    (["a b"], ["a b c"], ["a b c"]),  # no 4-gram in the references: "a b c a" still scores
    (["a b c a"], ["a b c a"], ["b c a b"]),  # attainable: the bound is the references' BLEU
]


@pytest.mark.parametrize("case", HAND + random_cases(24), ids=lambda c: " | ".join(map(repr, c)))
def test_the_bound_is_at_least_the_bleu_of_every_completion(case: tuple[list[str], list[str], list[str]]) -> None:
    done_hyps, done_refs, rest_refs = case
    scores = brute_force(done_hyps, done_refs, rest_refs, max_len=5)
    ub = bound(done_hyps, done_refs, rest_refs)
    assert max(scores) <= ub + 1e-9, f"a completion reaches {max(scores):.4f} > bound {ub:.4f}"
    if attainable(done_hyps, done_refs, rest_refs):  # the references are a completion: the bound is reached
        perfect = sacrebleu.corpus_bleu([*done_hyps, *rest_refs], [[*done_refs, *rest_refs]]).score
        assert max(scores) == pytest.approx(ub, abs=1e-9) and perfect == pytest.approx(ub, abs=1e-9)


def test_two_sentences_to_translate() -> None:
    """Completions of two sentences at once (every pair of hypotheses up to 3 words)."""
    rng = random.Random(7)
    for _ in range(3):
        done_refs, rest_refs = [sentence(rng, 2, 5)], [sentence(rng, 1, 3), sentence(rng, 1, 3)]
        done_hyps = [sentence(rng, 0, 3)]
        scores = brute_force(done_hyps, done_refs, rest_refs, max_len=3)
        assert max(scores) <= bound(done_hyps, done_refs, rest_refs) + 1e-9


def test_the_bound_is_not_trivial() -> None:
    """The bound is below 100 when a translated sentence is wrong, and above the BLEU of what is translated so
    far when the rest can still raise it (a bound of 100 everywhere would pass the test above)."""
    done_hyps, done_refs, rest_refs = ["c c c c"], ["a b c a"], ["b c a b c"]
    ub = bound(done_hyps, done_refs, rest_refs)
    so_far = sacrebleu.corpus_bleu(done_hyps, [done_refs]).score
    assert so_far < ub < 100.0
    assert ub == pytest.approx(max(brute_force(done_hyps, done_refs, rest_refs, max_len=5)), abs=1e-9)
