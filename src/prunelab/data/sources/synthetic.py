"""The synthetic generators (floor: data): the embedded data sets, generated from a seed, no files, no network. A
language pair on which translation needs attention (data=synthetic_translation; its source side is
data=synthetic_lm's language), and the negation-scope classification task (data=synthetic_classification).

The language pair:

Source ("English-like"): SVO, determiner + adjectives before the noun, plural `-s`, verb `-s` for a
third-person singular subject in the present and `-ed` in the past, prepositions.

Target: SOV (the verb moves to the end), adjectives after the noun, postpositions. Every noun has a
gender (3); determiners and adjectives agree with their noun in gender and number, and the verb agrees
with its subject in number and tense. So a target adjective's ending depends on a noun that comes
*after* it in the source, and the sentence-final verb's ending on a subject far back: no word-by-word
model can translate it.

Words are pseudo-words built from two different syllable inventories; the lexicon (hundreds of lemmas)
and the sentences are fully determined by the seed.

`regime="real"` makes the pair behave like a small real corpus (Multi30k, IWSLT) rather than a clean, large and
regular one: a lexicon of thousands of lemmas drawn with Zipfian frequencies (a long tail of words seen once or
twice in training, and test words never seen there), lexical ambiguity (some source words have 2-3 translations,
chosen by the clause's verb or at random), a few percent of noisy training pairs (target words shuffled, or another
sentence's target), and far fewer training pairs, so that a dropout-free model over-fits. `regime="clean"` (the
default) generates exactly the data it always has.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError

GENDERS = ("m", "f", "n")
NUMBERS = ("sg", "pl")
TENSES = ("pres", "past")
SRC_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
TGT_ONSETS = ["ch", "sh", "kh", "ts", "zh", "y", "w", "h", "j", "q", "x", "r", "l", "n"]
TGT_SYLLABLES = [c + v for c in TGT_ONSETS for v in ("a", "e", "i", "o", "u", "ae", "oi")]
N_DOMAINS = 3  # verbs' semantic domains: the context that picks a context-ambiguous noun's translation

# What each regime leaves to None: `clean` is the embedded default (large, regular, noise-free), `real` a small
# real-looking corpus: a Zipfian lexicon with a long tail, ambiguity, noisy training pairs, few examples.
REGIMES: dict[str, dict[str, Any]] = {
    "clean": {
        "train_size": 40_000,
        "n_nouns": 160,
        "n_adjectives": 60,
        "n_verbs": 60,
        "n_preps": 8,
        "noise": 0.0,
        "ambiguity": 0.0,
    },
    "real": {
        "train_size": 10_000,
        "n_nouns": 3000,
        "n_adjectives": 1000,
        "n_verbs": 800,
        "n_preps": 24,
        "noise": 0.04,
        "ambiguity": 0.15,
    },
}

# The same for the embedded classification task (prunelab.data.classification.SyntheticClassificationDataModule).
CLASSIFICATION_REGIMES: dict[str, dict[str, Any]] = {
    "clean": {"train_size": 20000, "n_nouns": 60, "n_adjectives": 40, "label_noise": 0.0},
    # 20k texts (SST-2 has 67k): with 4,000 nouns in 5k texts no model here learnt the rule (all at chance), with
    # 100 nouns the rule is learnable, and 10,000 adjectives (38% of types seen once), irrelevant to the label, invite
    # memorising
    "real": {"train_size": 20000, "n_nouns": 100, "n_adjectives": 10000, "label_noise": 0.04},
}


def regime_defaults(regimes: dict[str, dict[str, Any]], regime: str, given: dict[str, Any]) -> dict[str, Any]:
    """`given` with each None replaced by the regime's value; UserError for an unknown regime."""
    if regime not in regimes:
        raise UserError(f"data.regime must be {' or '.join(regimes)}, got {regime!r}")
    return {k: regimes[regime][k] if v is None else v for k, v in given.items()}


def check_fraction(name: str, value: float, top: float = 1.0) -> None:
    if not 0.0 <= value <= top:
        raise UserError(f"data.{name} must be between 0 and {top}, got {value}")


@lru_cache
def zipf_cum_weights(n: int) -> list[float]:
    """Cumulative weights of Zipf-like frequencies, as in natural text: rank r with weight 1 / (r + 1)."""
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
    # lexical ambiguity (none unless `ambiguity` > 0): a source stem -> its translations (target stem, gender or
    # "" for adjectives and verbs), the usual one first; those in `context` are chosen by the domain of the clause's
    # verb (`verb_domain`), the others at random
    senses: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    context: set[str] = field(default_factory=set)
    verb_domain: dict[str, int] = field(default_factory=dict)


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
        ambiguity: float = 0.0,
        ambiguity_context: float = 0.5,
    ):
        """`ambiguity`: the fraction of noun, adjective and verb lemmas with 2-3 translations; `ambiguity_context`:
        the fraction of ambiguous nouns whose translation the clause's verb picks (the others', and every ambiguous
        adjective's and verb's, is drawn at random: irreducible uncertainty)."""
        self.rng = random.Random(seed)
        self.stem_pieces: dict[str, list[str]] = {"and": ["and"], "ko": ["ko"]}
        self.max_adjectives = max_adjectives
        self.p_pp = p_pp
        self.p_conj = p_conj
        self.lex = self._make_lexicon(n_nouns, n_adjectives, n_verbs, n_preps)
        if ambiguity > 0:
            self._add_senses(ambiguity, ambiguity_context)

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
        self.tgt_taken = tgt_taken  # further target stems (other senses) must differ from these
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

    def _add_senses(self, ambiguity: float, ambiguity_context: float) -> None:
        """Give a fraction `ambiguity` of the noun, adjective and verb lemmas one or two more translations."""
        lex, rng = self.lex, self.rng
        lex.verb_domain = {s: rng.randrange(N_DOMAINS) for s, _, _ in lex.verbs}
        classes = (
            ([(s, t, g) for s, t, g in lex.nouns], "m"),
            ([(s, t, "") for s, t in lex.adjectives], "l"),
            ([(s, t, "") for s, t, _ in lex.verbs], "v"),
        )
        for lemmas, coda in classes:
            for s, t, g in lemmas:
                if rng.random() >= ambiguity:
                    continue
                more = self._words(1 if rng.random() < 0.7 else 2, TGT_SYLLABLES, self.tgt_taken, 1, 2, coda=coda)
                lex.senses[s] = [(t, g), *((m, rng.choice(GENDERS) if g else "") for m in more)]
                if g and rng.random() < ambiguity_context:
                    lex.context.add(s)

    def _translate(self, src: str, tgt: str, gender: str, rng: random.Random, domain: int) -> tuple[str, str]:
        """The target stem (and gender) of one occurrence of source stem `src`, usually (`tgt`, `gender`)."""
        senses = self.lex.senses.get(src)
        if not senses:
            return tgt, gender
        if src in self.lex.context:
            return senses[domain % len(senses)]
        return senses[rng.randrange(len(senses))]

    def segmentation(self) -> dict[str, list[str]]:
        """Every word form either side can produce -> its subword pieces (stem syllables, then ending)."""
        lex, seg = self.lex, dict(self.stem_pieces)
        for d, _ in lex.dets:
            seg[d] = [d]

        def inflect(stem: str, ending: str) -> None:
            seg[stem + ending] = [*self.stem_pieces[stem], ending]

        other = [(t, g) for senses in lex.senses.values() for t, g in senses[1:]]  # ambiguity's further stems
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
        for t, g in other:
            if g:  # a noun
                inflect(t, lex.noun_pl[g])
            else:
                for e in (lex.verb_end if t.endswith("v") else lex.adj_end).values():  # verbs' stems end in v
                    inflect(t, e)
        # bare target stems never occur alone except nouns; keep the table to real forms
        bare = {a for _, a in lex.adjectives} | {v for _, v, _ in lex.verbs} | {t for t, g in other if not g}
        for t in list(seg):
            if t in bare:
                del seg[t]
        return seg

    def source_segmentation(self) -> dict[str, list[str]]:
        """Every source-side word form -> its syllable pieces (the language of data=synthetic_lm)."""
        lex, seg = self.lex, self.segmentation()
        words = {"and", *(d for d, _ in lex.dets), *(p for p, _ in lex.preps), *(a for a, _ in lex.adjectives)}
        for s, _, _ in lex.nouns:
            words |= {s, s + "s"}
        for v, _, _ in lex.verbs:
            words |= {v, v + "s", v + "ed"}
        return {w: seg[w] for w in words}

    def vocabulary(self) -> set[str]:
        """Every word form either side can produce."""
        return set(self.segmentation())

    # --- sentences -----------------------------------------------------------------------------------
    @staticmethod
    def _zipf(items: list, rng: random.Random) -> object:
        """Zipf-like frequencies, as in natural text: rank r drawn with weight 1 / (r + 1)."""
        return rng.choices(items, cum_weights=zipf_cum_weights(len(items)))[0]

    def _np(self, rng: random.Random, depth: int, domain: int = 0) -> tuple[list[str], list[str], str]:
        """-> (source words, target words, number); `domain`: the clause verb's (picks ambiguous nouns' sense)."""
        src_n, tgt_n, g = self._zipf(self.lex.nouns, rng)  # type: ignore[misc]
        tgt_n, g = self._translate(src_n, tgt_n, g, rng, domain)
        num = rng.choice(NUMBERS)
        src_det, det_forms = rng.choice(self.lex.dets[:2] if num == "pl" else self.lex.dets)
        adjs = [self._zipf(self.lex.adjectives, rng) for _ in range(rng.randint(0, self.max_adjectives))]
        adjs = [(a, self._translate(a, t, "", rng, domain)[0]) for a, t in adjs]
        src = [src_det, *(a for a, _ in adjs), src_n + ("s" if num == "pl" else "")]
        tgt = [det_forms[(g, num)], tgt_n + (self.lex.noun_pl[g] if num == "pl" else "")]
        tgt += [t + self.lex.adj_end[(g, num)] for _, t in adjs]
        if depth < 1 and rng.random() < self.p_pp:
            ps, pt = self._pp(rng, depth + 1, domain)
            src, tgt = src + ps, tgt + pt
        return src, tgt, num

    def _pp(self, rng: random.Random, depth: int, domain: int = 0) -> tuple[list[str], list[str]]:
        src_p, tgt_p = self._zipf(self.lex.preps, rng)  # type: ignore[misc]
        s, t, _ = self._np(rng, depth, domain)
        return [src_p, *s], [*t, tgt_p]  # preposition -> postposition

    def _clause(self, rng: random.Random) -> tuple[list[str], list[str]]:
        if self.lex.verb_domain:  # ambiguity: the verb, whose domain picks its nouns' senses, is drawn first
            verb = self._zipf(self.lex.verbs, rng)
            domain = self.lex.verb_domain[verb[0]]  # type: ignore[index]
            subj_s, subj_t, num = self._np(rng, 0, domain)
        else:  # the clean pair's order of draws
            subj_s, subj_t, num = self._np(rng, 0)
            verb, domain = self._zipf(self.lex.verbs, rng), 0
        src_v, tgt_v, transitive = verb  # type: ignore[misc]
        tgt_v = self._translate(src_v, tgt_v, "", rng, domain)[0]
        tense = rng.choice(TENSES)
        src_vf = src_v + ("ed" if tense == "past" else "s" if num == "sg" else "")
        src, tgt = [*subj_s, src_vf], list(subj_t)
        if transitive:
            obj_s, obj_t, _ = self._np(rng, 0, domain)
            src, tgt = src + obj_s, tgt + obj_t + ["ko"]  # "ko" marks the object (accusative particle)
        if rng.random() < self.p_pp:
            ps, pt = self._pp(rng, 0, domain)
            src, tgt = src + ps, tgt + pt
        return src, [*tgt, tgt_v + self.lex.verb_end[(tense, num)]]  # verb-final

    def sentence(self, rng: random.Random) -> tuple[str, str]:
        src, tgt = self._clause(rng)
        if rng.random() < self.p_conj:
            s2, t2 = self._clause(rng)
            src, tgt = [*src, "and", *s2], [*tgt, "and", *t2]
        return " ".join(src), " ".join(tgt)


def draw_sentences(
    lang: SyntheticLanguagePair, rng: random.Random, sizes: dict[str, int]
) -> dict[str, list[tuple[str, str]]]:
    """Each split's (source, target) sentences, drawn from one stream: test, valid, then train. A source sentence
    drawn for test or valid is never drawn again, so valid and test sentences never occur in training."""
    out: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for split in ("test", "valid", "train"):
        pairs: list[tuple[str, str]] = []
        while len(pairs) < sizes[split]:
            s, t = lang.sentence(rng)
            if s in seen:
                continue
            if split != "train":
                seen.add(s)
            pairs.append((s, t))
        out[split] = pairs
    return out


def corrupt_targets(targets: list[str], noise: float, rng: random.Random) -> tuple[list[str], list[int]]:
    """A fraction `noise` of the targets (exactly round(noise * n), drawn from `rng`, their own random stream, so the
    sentences stay those of the noise-free corpus) garbled: half with their words shuffled, half replaced by
    another pair's target (a misaligned pair). A corrupted target always differs from its clean one.
    -> (the targets, the indices of the corrupted ones)."""
    n = len(targets)
    noisy = sorted(rng.sample(range(n), round(noise * n)))
    out = list(targets)
    for i in noisy:
        words = targets[i].split()
        bad = targets[i]
        if rng.random() < 0.5 and len(set(words)) > 1:
            while bad == targets[i]:
                rng.shuffle(words)
                bad = " ".join(words)
        while bad == targets[i]:
            bad = targets[rng.randrange(n)]
        out[i] = bad
    return out, noisy


# --- the embedded classification task: negation scope -----------------------------------------
class NegationScopeTask:
    """Two clauses, exactly one of them negated, and a question about one of the two subjects:

        the glorp is not vaty and the brell is dobe ? glorp      -> negated
        the glorp is not vaty and the brell is dobe ? brell      -> affirmed

    Every input holds the same multiset of words whichever clause carries the "not", so a bag-of-words
    model is at chance; the label needs word order and the link between the queried noun and its clause.
    Variety: optional intensifiers and adjective pairs, clause joiners, and a third, never negated and
    never queried, distractor clause. Nouns and adjectives are drawn uniformly, or with `zipf` with Zipfian
    frequencies (rank r with weight 1 / (r + 1)), as words are in real text: a long tail of rare words."""

    JOINERS = ("and", "but", "while", "whereas")
    INTENSIFIERS = ("very", "rather", "quite")

    def __init__(self, seed: int, n_nouns: int = 60, n_adjectives: int = 40, zipf: bool = False):
        rng = random.Random(f"negation-lexicon-{seed}")
        onsets, vowels, codas = "b d f g k l m n p r s t v z br gl pl tr st".split(), "a e i o u".split(), "n r s l"
        words: set[str] = set()

        def fresh(count: int) -> list[str]:
            out = []
            while len(out) < count:
                w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 2)))
                w += rng.choice([*codas.split(), ""])
                if w not in words:
                    words.add(w)
                    out.append(w)
            return out

        self.nouns = fresh(n_nouns)
        self.adjectives = fresh(n_adjectives)
        self.zipf = zipf
        if zipf:
            self._noun_weights, self._adj_weights = zipf_cum_weights(n_nouns), zipf_cum_weights(n_adjectives)

    def vocabulary(self) -> set[str]:
        fixed = {"the", "is", "not", "?", *self.JOINERS, *self.INTENSIFIERS}
        return fixed | set(self.nouns) | set(self.adjectives)

    def _adjective(self, rng: random.Random) -> str:
        if self.zipf:
            return rng.choices(self.adjectives, cum_weights=self._adj_weights)[0]
        return rng.choice(self.adjectives)

    def _three_nouns(self, rng: random.Random) -> list[str]:
        if not self.zipf:
            return rng.sample(self.nouns, 3)
        out: list[str] = []
        while len(out) < 3:
            noun = rng.choices(self.nouns, cum_weights=self._noun_weights)[0]
            if noun not in out:
                out.append(noun)
        return out

    def _clause(self, rng: random.Random, noun: str, negated: bool) -> list[str]:
        words = ["the", noun, "is"] + (["not"] if negated else [])
        if rng.random() < 0.3:
            words.append(rng.choice(self.INTENSIFIERS))
        words.append(self._adjective(rng))
        if rng.random() < 0.2:
            words += ["and", self._adjective(rng)]
        return words

    def example(self, rng: random.Random) -> tuple[str, str]:
        n1, n2, n3 = self._three_nouns(rng)
        first_negated = rng.random() < 0.5
        words = [*self._clause(rng, n1, first_negated), rng.choice(self.JOINERS)]
        words += self._clause(rng, n2, not first_negated)
        if rng.random() < 0.3:  # a distractor clause: never negated, never asked about
            words += [rng.choice(self.JOINERS), *self._clause(rng, n3, False)]
        query_first = rng.random() < 0.5
        words += ["?", n1 if query_first else n2]
        return " ".join(words), "negated" if query_first == first_negated else "affirmed"


def bag_of_words(texts: Sequence[str], vocab: dict[str, int]) -> Tensor:
    """Word-count vectors (N, V): the input of the bag-of-words baseline that the synthetic task defeats."""
    x = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        for w in t.split():
            x[i, vocab[w]] += 1
    return x
