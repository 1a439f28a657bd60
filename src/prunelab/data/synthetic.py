"""A synthetic language pair, generated from a seed, on which translation needs attention.

Source ("English-like"): SVO, determiner + adjectives before the noun, plural `-s`, verb `-s` for a
third-person singular subject in the present and `-ed` in the past, prepositions.

Target: SOV (the verb moves to the end), adjectives after the noun, postpositions. Every noun has a
gender (3); determiners and adjectives agree with their noun in gender and number, and the verb agrees
with its subject in number and tense. So a target adjective's ending depends on a noun that comes
*after* it in the source, and the sentence-final verb's ending on a subject far back: no word-by-word
model can translate it.

Words are pseudo-words built from two different syllable inventories; the lexicon (hundreds of lemmas)
and the sentences are fully determined by the seed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from prunelab.data.tokenizer import PieceTokenizer, Tokenizer, WordTokenizer
from prunelab.data.translation import TranslationDataModule
from prunelab.errors import UserError

GENDERS = ("m", "f", "n")
NUMBERS = ("sg", "pl")
TENSES = ("pres", "past")
SRC_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
TGT_ONSETS = ["ch", "sh", "kh", "ts", "zh", "y", "w", "h", "j", "q", "x", "r", "l", "n"]
TGT_SYLLABLES = [c + v for c in TGT_ONSETS for v in ("a", "e", "i", "o", "u", "ae", "oi")]


@lru_cache
def _zipf_cum_weights(n: int) -> list[float]:
    return list(itertools.accumulate(1.0 / (r + 1) for r in range(n)))


@dataclass
class Lexicon:
    nouns: list[tuple[str, str, str]] = field(default_factory=list)  # (source stem, target stem, gender)
    adjectives: list[tuple[str, str]] = field(default_factory=list)
    verbs: list[tuple[str, str, bool]] = field(default_factory=list)  # (src, tgt, transitive)
    preps: list[tuple[str, str]] = field(default_factory=list)
    dets: list[tuple[str, dict[tuple[str, str], str]]] = field(default_factory=list)  # src -> (g, n) -> tgt
    noun_pl: dict[str, str] = field(default_factory=dict)  # gender -> target plural ending
    adj_end: dict[tuple[str, str], str] = field(default_factory=dict)  # (gender, number) -> ending
    verb_end: dict[tuple[str, str], str] = field(default_factory=dict)  # (tense, number) -> ending


class SyntheticLanguagePair:
    def __init__(
        self,
        seed: int = 0,
        n_nouns: int = 160,
        n_adjectives: int = 60,
        n_verbs: int = 60,
        n_preps: int = 8,
        max_adjectives: int = 2,
        p_pp: float = 0.3,
        p_conj: float = 0.15,
    ):
        self.rng = random.Random(seed)
        self.stem_pieces: dict[str, list[str]] = {"and": ["and"], "ko": ["ko"]}
        self.max_adjectives = max_adjectives
        self.p_pp = p_pp
        self.p_conj = p_conj
        self.lex = self._make_lexicon(n_nouns, n_adjectives, n_verbs, n_preps)

    # --- lexicon -------------------------------------------------------------------------------------
    def _words(self, n: int, syllables: list[str], taken: set[str], lo: int, hi: int, coda: str = "") -> list[str]:
        """n new words of lo..hi syllables (+ coda); their syllables are recorded as their subword pieces."""
        out = []
        while len(out) < n:
            pieces = [self.rng.choice(syllables) for _ in range(self.rng.randint(lo, hi))]
            pieces[-1] += coda
            w = "".join(pieces)
            if w not in taken:
                taken.add(w)
                out.append(w)
                self.stem_pieces[w] = pieces
        return out

    def _make_lexicon(self, n_nouns: int, n_adj: int, n_verbs: int, n_preps: int) -> Lexicon:
        lex = Lexicon()
        src_taken: set[str] = {"and"}
        tgt_taken: set[str] = {"ko"}
        # target stems end in a consonant so that vowel endings attach; endings are distinct per slot
        for g, e in zip(GENDERS, ("i", "e", "a"), strict=True):
            lex.noun_pl[g] = e
        for (g, n), e in zip(
            [(g, n) for g in GENDERS for n in NUMBERS], ("o", "ei", "a", "ai", "u", "ui"), strict=True
        ):
            lex.adj_end[(g, n)] = e
        for (t, n), e in zip([(t, n) for t in TENSES for n in NUMBERS], ("an", "ant", "ur", "urt"), strict=True):
            lex.verb_end[(t, n)] = e
        src_nouns = self._words(n_nouns, SRC_SYLLABLES, src_taken, 2, 3, coda="t")
        tgt_nouns = self._words(n_nouns, TGT_SYLLABLES, tgt_taken, 1, 2, coda="m")
        lex.nouns = [(s, t, self.rng.choice(GENDERS)) for s, t in zip(src_nouns, tgt_nouns, strict=True)]
        src_adj = self._words(n_adj, SRC_SYLLABLES, src_taken, 2, 3, coda="y")
        tgt_adj = self._words(n_adj, TGT_SYLLABLES, tgt_taken, 1, 2, coda="l")
        lex.adjectives = list(zip(src_adj, tgt_adj, strict=True))
        src_verbs = self._words(n_verbs, SRC_SYLLABLES, src_taken, 2, 3, coda="k")
        tgt_verbs = self._words(n_verbs, TGT_SYLLABLES, tgt_taken, 1, 2, coda="v")
        lex.verbs = [(s, t, self.rng.random() < 0.7) for s, t in zip(src_verbs, tgt_verbs, strict=True)]
        src_preps = self._words(n_preps, SRC_SYLLABLES, src_taken, 1, 1)
        tgt_preps = self._words(n_preps, TGT_SYLLABLES, tgt_taken, 1, 1)
        lex.preps = list(zip(src_preps, tgt_preps, strict=True))
        for src_det in ("the", "a", "this", "every"):
            forms = self._words(6, TGT_SYLLABLES, tgt_taken, 1, 1)
            slots = [(g, n) for g in GENDERS for n in NUMBERS]
            lex.dets.append((src_det, dict(zip(slots, forms, strict=True))))
        return lex

    def segmentation(self) -> dict[str, list[str]]:
        """Every word form either side can produce -> its subword pieces (stem syllables, then ending)."""
        lex, seg = self.lex, dict(self.stem_pieces)
        for d, _ in lex.dets:
            seg[d] = [d]

        def inflect(stem: str, ending: str) -> None:
            seg[stem + ending] = [*self.stem_pieces[stem], ending]

        for s, t, g in lex.nouns:
            inflect(s, "s")
            inflect(t, lex.noun_pl[g])
        for _, t in lex.adjectives:
            for e in lex.adj_end.values():
                inflect(t, e)
        for s, t, _ in lex.verbs:
            inflect(s, "s")
            inflect(s, "ed")
            for e in lex.verb_end.values():
                inflect(t, e)
        for t in list(seg):  # bare target stems never occur alone except nouns; keep the table to real forms
            if t in {a for _, a in lex.adjectives} | {v for _, v, _ in lex.verbs}:
                del seg[t]
        return seg

    def vocabulary(self) -> set[str]:
        """Every word form either side can produce."""
        return set(self.segmentation())

    # --- sentences -----------------------------------------------------------------------------------
    @staticmethod
    def _zipf(items: list, rng: random.Random) -> object:
        """Zipf-like frequencies, as in natural text: rank r drawn with weight 1 / (r + 1)."""
        return rng.choices(items, cum_weights=_zipf_cum_weights(len(items)))[0]

    def _np(self, rng: random.Random, depth: int) -> tuple[list[str], list[str], str]:
        """-> (source words, target words, number)."""
        src_n, tgt_n, g = self._zipf(self.lex.nouns, rng)  # type: ignore[misc]
        num = rng.choice(NUMBERS)
        src_det, det_forms = rng.choice(self.lex.dets[:2] if num == "pl" else self.lex.dets)
        adjs = [self._zipf(self.lex.adjectives, rng) for _ in range(rng.randint(0, self.max_adjectives))]
        src = [src_det, *(a for a, _ in adjs), src_n + ("s" if num == "pl" else "")]
        tgt = [det_forms[(g, num)], tgt_n + (self.lex.noun_pl[g] if num == "pl" else "")]
        tgt += [t + self.lex.adj_end[(g, num)] for _, t in adjs]
        if depth < 1 and rng.random() < self.p_pp:
            ps, pt = self._pp(rng, depth + 1)
            src, tgt = src + ps, tgt + pt
        return src, tgt, num

    def _pp(self, rng: random.Random, depth: int) -> tuple[list[str], list[str]]:
        src_p, tgt_p = self._zipf(self.lex.preps, rng)  # type: ignore[misc]
        s, t, _ = self._np(rng, depth)
        return [src_p, *s], [*t, tgt_p]  # preposition -> postposition

    def _clause(self, rng: random.Random) -> tuple[list[str], list[str]]:
        subj_s, subj_t, num = self._np(rng, 0)
        src_v, tgt_v, transitive = self._zipf(self.lex.verbs, rng)  # type: ignore[misc]
        tense = rng.choice(TENSES)
        src_vf = src_v + ("ed" if tense == "past" else "s" if num == "sg" else "")
        src, tgt = [*subj_s, src_vf], list(subj_t)
        if transitive:
            obj_s, obj_t, _ = self._np(rng, 0)
            src, tgt = src + obj_s, tgt + obj_t + ["ko"]  # "ko" marks the object (accusative particle)
        if rng.random() < self.p_pp:
            ps, pt = self._pp(rng, 0)
            src, tgt = src + ps, tgt + pt
        return src, [*tgt, tgt_v + self.lex.verb_end[(tense, num)]]  # verb-final

    def sentence(self, rng: random.Random) -> tuple[str, str]:
        src, tgt = self._clause(rng)
        if rng.random() < self.p_conj:
            s2, t2 = self._clause(rng)
            src, tgt = [*src, "and", *s2], [*tgt, "and", *t2]
        return " ".join(src), " ".join(tgt)


class SyntheticTranslationDataModule(TranslationDataModule):
    """`data=synthetic_translation`: the embedded default, needs no files and no network."""

    def __init__(
        self,
        train_size: int = 40_000,
        valid_size: int = 300,
        test_size: int = 500,
        n_nouns: int = 160,
        n_adjectives: int = 60,
        n_verbs: int = 60,
        n_preps: int = 8,
        max_adjectives: int = 2,
        p_pp: float = 0.3,
        p_conj: float = 0.15,
        tokenization: str = "syllable",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if tokenization not in ("syllable", "word"):
            raise UserError(f"data.tokenization must be syllable or word, got {tokenization!r}")
        self.tokenization = tokenization
        self.sizes = {"train": train_size, "valid": valid_size, "test": test_size}
        self.lang = SyntheticLanguagePair(
            self.seed, n_nouns, n_adjectives, n_verbs, n_preps, max_adjectives, p_pp, p_conj
        )

    @cached_property
    def corpus(self) -> dict[str, tuple[list[str], list[str]]]:
        """Splits drawn from one stream; valid/test sentences never occur in train."""
        rng = random.Random(f"{self.seed}-sentences")
        out: dict[str, tuple[list[str], list[str]]] = {}
        seen: set[str] = set()
        for split in ("test", "valid", "train"):
            src, tgt = [], []
            while len(src) < self.sizes[split]:
                s, t = self.lang.sentence(rng)
                if s in seen:
                    continue
                if split != "train":
                    seen.add(s)
                src.append(s)
                tgt.append(t)
            out[split] = (src, tgt)
        return out

    def build_tokenizer(self) -> Tokenizer:
        if self.tokenization == "word":
            return WordTokenizer(self.lang.vocabulary())
        return PieceTokenizer(self.lang.segmentation())

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        return self.corpus[split]
