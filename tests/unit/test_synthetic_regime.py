"""The embedded generators' `regime`: `clean` is today's data bit for bit; `real` looks like a small real corpus
(Zipfian lexicon with a long tail, unseen test words, ambiguity, noisy training pairs, few examples).

The pinned values of the clean regime were computed with the generators as they were before `regime` existed."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from prunelab.cli.train import CONF_DIR
from prunelab.data.classification import SyntheticClassificationDataModule
from prunelab.data.sources.synthetic import NegationScopeTask, SyntheticLanguagePair
from prunelab.data.tokenizer import UNK
from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.errors import UserError


def digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def corpus_digest(corpus: dict[str, tuple[list[str], list[str]]]) -> str:
    return digest({split: [list(src), list(tgt)] for split, (src, tgt) in corpus.items()})


def classification_digest(dm: SyntheticClassificationDataModule) -> str:
    return digest({s: [list(part) for part in dm.read_split(s)] for s in ("train", "valid", "test")})


def rank_frequency_slope(counts: Counter) -> float:
    """Least-squares slope of log(frequency) on log(rank) over every type."""
    pts = [(math.log(r + 1), math.log(c)) for r, c in enumerate(sorted(counts.values(), reverse=True))]
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def word_counts(lines: list[str]) -> Counter:
    return Counter(w for line in lines for w in line.split())


def data_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@cache
def real_translation(**kwargs: object) -> SyntheticTranslationDataModule:
    return SyntheticTranslationDataModule(seed=1234, regime="real", **kwargs)


@cache
def real_classification(**kwargs: object) -> SyntheticClassificationDataModule:
    return SyntheticClassificationDataModule(seed=1234, regime="real", **kwargs)


# --- clean: today's data, bit for bit ---------------------------------------------------------------------------
def test_clean_translation_is_unchanged() -> None:
    dm = SyntheticTranslationDataModule(seed=1234)  # the defaults are the clean regime's, as data=synthetic_translation
    corpus = dm.corpus
    assert corpus_digest(corpus) == "e906401e7e48f847e9e82ffa93f7b2b2b31906e1b9cdbee26f45eef062cd5300"
    assert [len(corpus[s][0]) for s in ("train", "valid", "test")] == [40000, 300, 500]
    assert (corpus["test"][0][0], corpus["test"][1][0]) == ("a panut rogofoked", "li chishem yaewaevur")
    assert corpus["train"][0][-1].startswith("a sadetay tamiy fubafets mozoguked the sikats so the supepots")
    assert corpus["train"][1][-1].endswith(
        "tsu shom khalo tsu raenom xaelaelo zhu zhutsome ha ko xoi rechem ha choikhaevan"
    )
    tok = dm.tokenizer
    assert tok.vocab_size == 709
    assert digest(tok.itos) == "be2af2702b212a893ef04250ae2a83c6882b677930519880c411e46704c78072"
    assert tok.encode("a panut rogofoked") == [4, 360, 355, 439, 132, 111, 90]
    assert tok.encode("li chishem yaewaevur") == [264, 46, 469, 631, 578, 555]
    word = SyntheticTranslationDataModule(seed=1234, train_size=10, valid_size=2, test_size=2, tokenization="word")
    assert word.tokenizer.vocab_size == 1529
    assert digest(word.tokenizer.itos) == "ae63ef9aef094d860b89f465e737874dffa128bb34a4d43e10b59076bd68b070"
    small = SyntheticTranslationDataModule(seed=7, train_size=500, valid_size=20, test_size=20)
    assert corpus_digest(small.corpus) == "09f9514189bec2cf358713a664b654b1002f8d5c70b163940ed438f96b4a971c"
    assert not dm.noisy and not dm.lang.lex.senses


def test_clean_language_pair_is_unchanged() -> None:
    lang, rng = SyntheticLanguagePair(), random.Random(0)
    assert [lang.sentence(rng) for _ in range(3)] == [
        ("the sidey safabits dunuked", "wa naeme tsenelai qorovurt"),
        (
            "a dokay fuvosut ru this dugolet fotiriked this vuzuy levetet do the vadiy dokay ratats",
            "xae chaechaem shola tsoi chiwom kha hi shozhom woshaelo ko noi yoruma hoishoilui sholui ro zhuvur",
        ),
        (
            "every vuzuy betot refiks a torot and the zaguy livugits povuk a dituts",
            "tsa hom woshaelu xae yuqom ko nechavan and noi hema rilui tse wuxuma ko sheqaevant",
        ),
    ]


def test_clean_classification_is_unchanged() -> None:
    dm = SyntheticClassificationDataModule(seed=1234)
    assert classification_digest(dm) == "78bc18445953c633f3e06856459c77a4775147cc4c1464c596fa4b2322850ca7"
    texts, labels = dm.read_split("train")
    assert (texts[0], labels[0]) == ("the listur is not very suzin whereas the stiro is benen ? stiro", "affirmed")
    assert dm.tokenizer.vocab_size == 115
    assert digest(dm.tokenizer.itos) == "97d3192668e5bca908685c5157177ff458a3437ee29391c31f65b90feff7c579"
    assert dm.tokenizer.encode(texts[0]) == [96, 49, 34, 67, 104, 94, 105, 96, 90, 34, 9, 4, 90]
    task, rng = NegationScopeTask(seed=3), random.Random(0)
    assert [task.example(rng) for _ in range(2)] == [
        ("the bres is quite degan while the glar is not lin ? glar", "negated"),
        ("the gaben is not ster but the bregle is leton ? gaben", "negated"),
    ]


def test_default_configs_give_the_clean_data() -> None:
    cfg = data_cfg()
    dm = instantiate(cfg.data)
    assert corpus_digest(dm.corpus) == "e906401e7e48f847e9e82ffa93f7b2b2b31906e1b9cdbee26f45eef062cd5300"
    cfg = data_cfg("data=synthetic_classification")
    assert cfg.task._target_ == "prunelab.tasks.ClassificationTask"
    dm = instantiate(cfg.data)
    assert classification_digest(dm) == "78bc18445953c633f3e06856459c77a4775147cc4c1464c596fa4b2322850ca7"


# --- real: translation ---------------------------------------------------------------------------------------------
def test_real_translation_has_a_zipfian_long_tail_and_unseen_test_words() -> None:
    dm = real_translation()
    (train_src, train_tgt), (test_src, _) = dm.corpus["train"], dm.corpus["test"]
    assert len(train_src) == 10000
    for lines in (train_src, train_tgt):
        counts = word_counts(lines)
        assert len(counts) > 5000
        singletons = sum(c == 1 for c in counts.values()) / len(counts)
        assert singletons > 0.25, singletons  # a long tail: many words seen once
        assert -1.3 < rank_frequency_slope(counts) < -0.85  # Zipf: frequency ~ 1 / rank
    seen = word_counts(train_src)
    test_types = set(word_counts(test_src))
    unseen = {w for w in test_types if w not in seen}
    assert 0.03 < len(unseen) / len(test_types) < 0.2
    # the clean regime on as many pairs: every word frequent
    clean = word_counts(SyntheticTranslationDataModule(seed=1234, train_size=10000).corpus["train"][0])
    assert sum(c == 1 for c in clean.values()) / len(clean) < 0.05 and len(clean) < 1500
    # syllable pieces cover unseen words (as BPE does); word tokenization, from the training pairs, does not
    assert UNK not in [i for s in test_src for i in dm.tokenizer.encode(s)]
    words = real_translation(tokenization="word").tokenizer
    ids = [i for s in test_src for i in words.encode(s)]
    assert ids.count(UNK) == sum(w not in seen for s in test_src for w in s.split()) > 0


def test_real_translation_ambiguous_words_have_several_translations() -> None:
    dm = real_translation(noise=0.0)  # the same pairs without the noise
    lex = dm.lang.lex
    nouns = {s: [(t, g)] for s, t, g in lex.nouns} | {s: v for s, v in lex.senses.items() if v[0][1]}
    forms = {s: {t: (t, t + lex.noun_pl[g]) for t, g in senses} for s, senses in nouns.items()}
    seen: dict[str, Counter] = defaultdict(Counter)  # noun -> target stems it was translated by
    by_verb: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # noun -> verb -> stems
    for src, tgt in zip(*dm.corpus["train"], strict=True):
        words, tgt_words = src.split(), set(tgt.split())
        single_clause = "and" not in words
        verb = next(w for w in words if w.endswith(("k", "ks", "ked"))).removesuffix("s").removesuffix("ed")
        lemmas = Counter(w.removesuffix("s") for w in words if w.endswith(("t", "ts")))
        for noun, n in lemmas.items():
            if n != 1:
                continue
            hits = [t for t, fs in forms[noun].items() if tgt_words & set(fs)]
            assert len(hits) == 1, (src, tgt, noun)
            seen[noun][hits[0]] += 1
            if single_clause:
                by_verb[noun][verb].add(hits[0])
    frequent = [s for s in nouns if sum(seen[s].values()) >= 30]
    ambiguous = [s for s in frequent if len(nouns[s]) > 1]
    assert len(ambiguous) >= 5
    assert all(len(seen[s]) >= 2 for s in ambiguous)  # several translations in the training data
    assert all(len(seen[s]) == 1 for s in frequent if len(nouns[s]) == 1)
    # a context-ambiguous noun's translation is a function of the clause's verb; a random one's is not
    context = [s for s in ambiguous if s in lex.context]
    random_ = [s for s in ambiguous if s not in lex.context]
    assert context and random_
    assert all(len(stems) == 1 for s in context for stems in by_verb[s].values())
    assert any(len(stems) > 1 for s in random_ for stems in by_verb[s].values())
    # about 15% of the lemmas are ambiguous
    assert 0.1 < sum(len(nouns[s]) > 1 for s in nouns) / len(nouns) < 0.2


def test_real_translation_noise_only_in_training() -> None:
    noisy, clean = real_translation(), real_translation(noise=0.0)
    assert noisy.corpus["valid"] == clean.corpus["valid"] and noisy.corpus["test"] == clean.corpus["test"]
    assert noisy.corpus["train"][0] == clean.corpus["train"][0]  # the same sources
    pairs = list(zip(noisy.corpus["train"][1], clean.corpus["train"][1], strict=True))
    corrupted = [(bad, good) for bad, good in pairs if bad != good]
    assert len(corrupted) == 400  # 4% of 10,000
    clean_targets = set(clean.corpus["train"][1])
    shuffled = sum(sorted(bad.split()) == sorted(good.split()) for bad, good in corrupted)
    misaligned = sum(bad in clean_targets for bad, good in corrupted)
    assert shuffled + misaligned >= len(corrupted) and shuffled > 100 and misaligned > 100

    # every evaluation target is a well-formed translation: verb-final, the verb agreeing in tense and number
    verb_forms = {t + e for _, t, _ in noisy.lang.lex.verbs for e in noisy.lang.lex.verb_end.values()}
    verb_forms |= {
        t + e for v in noisy.lang.lex.senses.values() for t, _ in v for e in noisy.lang.lex.verb_end.values()
    }
    for split in ("valid", "test"):
        assert all(t.split()[-1] in verb_forms for t in noisy.corpus[split][1])
    assert sum(bad.split()[-1] not in verb_forms for bad, _ in corrupted) > 50

    sizes = {"seed": 5, "regime": "real", "train_size": 1000, "valid_size": 20, "test_size": 20}
    exact = SyntheticTranslationDataModule(**sizes, noise=0.0).corpus["train"][1]
    more = SyntheticTranslationDataModule(**sizes, noise=0.1).corpus["train"][1]
    assert sum(a != b for a, b in zip(exact, more, strict=True)) == 100


def test_real_translation_is_a_function_of_the_seed() -> None:
    again = SyntheticTranslationDataModule(seed=1234, regime="real")
    assert again.corpus == real_translation().corpus
    assert again.tokenizer.itos == real_translation().tokenizer.itos
    other = SyntheticTranslationDataModule(seed=1235, regime="real", train_size=200, valid_size=10, test_size=10)
    assert other.corpus["test"][0] != real_translation().corpus["test"][0][:10]
    assert other.corpus["train"][0][:200] != real_translation().corpus["train"][0][:200]


# --- real: classification ------------------------------------------------------------------------------------------
def rule_label(text: str, nouns: set[str]) -> str:
    """The true label, read off the text: is the queried noun the subject of the clause holding "not"?"""
    words = text.split()
    negated = [w for w in words[: words.index("not")] if w in nouns][-1]
    return "negated" if negated == words[-1] else "affirmed"


def test_real_classification_has_a_long_tail_and_unseen_test_words() -> None:
    dm = real_classification()
    (train, _), (test, _) = dm.read_split("train"), dm.read_split("test")
    assert len(train) == 20000
    counts = word_counts(train)
    assert sum(c == 1 for c in counts.values()) / len(counts) > 0.2
    assert -1.3 < rank_frequency_slope(counts) < -0.85
    clean = word_counts(SyntheticClassificationDataModule(seed=1234, train_size=5000).read_split("train")[0])
    assert min(clean.values()) > 10  # the clean task: a small lexicon drawn uniformly
    test_words = [w for t in test for w in t.split()]
    unseen = sum(w not in counts for w in test_words)
    assert 0.005 < unseen / len(test_words) < 0.1
    dm.setup()  # the vocabulary comes from the training texts: unseen test words are unknown
    assert sum(ids.count(UNK) for ids, *_ in dm.examples["test"]) == unseen
    assert sum(ids.count(UNK) for ids, *_ in dm.examples["train"]) == 0


def test_real_classification_label_noise_only_in_training() -> None:
    dm = real_classification()
    nouns = set(dm.task.nouns)
    texts, labels = dm.read_split("train")
    wrong = sum(rule_label(t, nouns) != y for t, y in zip(texts, labels, strict=True))
    assert wrong == 800  # 4% of 20,000
    for split in ("valid", "test"):
        texts, labels = dm.read_split(split)
        assert all(rule_label(t, nouns) == y for t, y in zip(texts, labels, strict=True))
    more = SyntheticClassificationDataModule(seed=2, regime="real", train_size=1000, label_noise=0.1)
    texts, labels = more.read_split("train")
    assert sum(rule_label(t, set(more.task.nouns)) != y for t, y in zip(texts, labels, strict=True)) == 100


def test_real_classification_is_a_function_of_the_seed() -> None:
    again = SyntheticClassificationDataModule(seed=1234, regime="real")
    assert classification_digest(again) == classification_digest(real_classification())
    other = SyntheticClassificationDataModule(seed=1235, regime="real")
    assert other.read_split("train") != again.read_split("train")


# --- the presets and the option ---------------------------------------------------------------------------------
def test_real_presets_match_the_regime_option() -> None:
    conf = Path(CONF_DIR) / "data"
    for name in ("synthetic_translation_real", "synthetic_classification_real"):
        assert (conf / f"{name}.yaml").read_text().rstrip().splitlines()[-1].startswith("tokenizer: ${oc.select:")
    preset = instantiate(data_cfg("data=synthetic_translation_real").data)
    option = instantiate(data_cfg("data.regime=real").data)
    assert preset.regime == option.regime == "real" and preset.sizes["train"] == 10000 and preset.noise == 0.04
    assert preset.corpus == option.corpus == real_translation().corpus
    cfg = data_cfg("data=synthetic_classification_real")
    assert cfg.task._target_ == "prunelab.tasks.ClassificationTask"  # the override of synthetic_classification
    preset = instantiate(cfg.data)
    option = instantiate(data_cfg("data=synthetic_classification", "data.regime=real").data)
    assert (
        classification_digest(preset) == classification_digest(option) == classification_digest(real_classification())
    )


def test_bad_options() -> None:
    with pytest.raises(UserError, match="regime"):
        SyntheticTranslationDataModule(regime="noisy")
    with pytest.raises(UserError, match="regime"):
        SyntheticClassificationDataModule(regime="noisy")
    with pytest.raises(UserError, match="noise"):
        SyntheticTranslationDataModule(noise=0.9)
    with pytest.raises(UserError, match="label_noise"):
        SyntheticClassificationDataModule(label_noise=-0.1)
