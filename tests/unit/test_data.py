import pytest
import torch

from prunelab.data.batching import TokenBatchSampler, collate
from prunelab.data.sources.synthetic import SyntheticLanguagePair
from prunelab.data.tokenizer import BOS, EOS, WordTokenizer
from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.errors import UserError


def small_dm(seed: int) -> SyntheticTranslationDataModule:
    return SyntheticTranslationDataModule(train_size=300, valid_size=30, test_size=30, seed=seed)


def test_synthetic_is_deterministic_per_seed() -> None:
    a, b, c = small_dm(3).corpus, small_dm(3).corpus, small_dm(4).corpus
    assert a == b
    assert a["train"] != c["train"]


def test_synthetic_held_out_sentences_not_in_train() -> None:
    corpus = small_dm(0).corpus
    train = set(corpus["train"][0])
    assert not train & set(corpus["valid"][0]) and not train & set(corpus["test"][0])
    assert len(corpus["train"][0]) == 300 and len(corpus["test"][1]) == 30


def test_synthetic_grammar_reorders_and_agrees() -> None:
    lang = SyntheticLanguagePair(seed=0)
    lex = lang.lex
    verb_forms = {t + e: (tense, num) for _, t, _ in lex.verbs for (tense, num), e in lex.verb_end.items()}
    import random

    rng = random.Random(0)
    for _ in range(200):
        src, tgt = lang.sentence(rng)
        if " and " in src:
            continue
        # the target is verb-final and the verb agrees with the subject's number
        assert tgt.split()[-1] in verb_forms
        subj_plural = src.split()[1 + sum(w in {a for a, _ in lex.adjectives} for w in src.split()[1:3])].endswith("s")
        assert verb_forms[tgt.split()[-1]][1] == ("pl" if subj_plural else "sg")
    assert len(lang.vocabulary()) > 1000  # hundreds of lemmas, inflected


def test_word_tokenizer_round_trip() -> None:
    tok = WordTokenizer(["b", "a", "c"])
    assert tok.vocab_size == 7
    assert tok.decode(tok.encode("a c b")) == "a c b"
    assert tok.encode("zzz") == [tok.unk_id]


def test_collate_shapes_and_shift() -> None:
    batch = collate([([5, 6, EOS], [7, 8, 9], "x y z", 0), ([5, EOS], [7], "x", 1)], pad_id=0)
    assert batch["src"].tolist() == [[5, 6, EOS], [5, EOS, 0]]
    assert batch["tgt_in"].tolist() == [[BOS, 7, 8, 9], [BOS, 7, 0, 0]]
    assert batch["tgt_out"].tolist() == [[7, 8, 9, EOS], [7, EOS, 0, 0]]
    assert batch["ref"] == ["x y z", "x"] and torch.equal(batch["idx"], torch.tensor([0, 1]))
    assert batch["n_tokens"] == (3 + 4) + (2 + 2)  # source incl. EOS + target incl. EOS, no padding


@pytest.mark.parametrize("shuffle", [True, False])
def test_token_batches_respect_max_tokens_and_cover_everything(shuffle: bool) -> None:
    import random

    lengths = [random.Random(i).randint(1, 40) for i in range(500)]
    sampler = TokenBatchSampler(lengths, max_tokens=200, shuffle=shuffle, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(max(lengths[i] for i in b) * len(b) <= 200 for b in batches)
    assert len(sampler) == len(batches)
    # bucketing: batches are nearly uniform in length
    assert sum(max(lengths[i] for i in b) * len(b) for b in batches) < 1.25 * sum(lengths)


def test_token_batches_shard_for_ddp_and_reshuffle_per_epoch() -> None:
    lengths = [(i * 7) % 30 + 1 for i in range(301)]
    shards = [list(TokenBatchSampler(lengths, 100, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    covered = {i for s in shards for b in s for i in b}
    assert covered == set(range(301))
    s = TokenBatchSampler(lengths, 100, seed=2)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first


def test_sampler_rejects_impossible_budget() -> None:
    with pytest.raises(ValueError, match="smaller than the longest"):
        TokenBatchSampler([5, 50], max_tokens=10)


def test_piece_tokenizer_round_trips_and_marks_continuations() -> None:
    from prunelab.data.tokenizer import PieceTokenizer

    tok = PieceTokenizer({"matizat": ["ma", "ti", "zat"], "matizats": ["ma", "ti", "zat", "s"], "the": ["the"]})
    ids = tok.encode("the matizats matizat")
    assert [tok.itos[i] for i in ids] == ["the", "ma@@", "ti@@", "zat@@", "s", "ma@@", "ti@@", "zat"]
    assert tok.decode(ids) == "the matizats matizat"
    assert tok.encode("unknown") == [tok.unk_id]


def test_synthetic_default_is_subword_level() -> None:
    dm = small_dm(0)
    dm.setup()
    tok = dm.tokenizer
    src, tgt = dm.corpus["test"]
    assert all(tok.decode(tok.encode(s)) == s for s in src + tgt)
    # pieces are shared between words: far fewer types than word forms
    assert tok.vocab_size < len(dm.lang.vocabulary()) / 1.5
    words = SyntheticTranslationDataModule(train_size=10, valid_size=2, test_size=2, tokenization="word")
    assert words.tokenizer.vocab_size == len(words.lang.vocabulary()) + 4


def test_lightning_reaches_set_epoch_and_resume_is_exact() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DataLoader

    lengths = [(i * 7) % 30 + 1 for i in range(200)]
    sampler = TokenBatchSampler(lengths, 100, seed=3)
    loader = DataLoader(list(range(200)), batch_sampler=sampler)
    _set_sampler_epoch(loader, 2)  # what Lightning calls at the start of every epoch
    assert sampler.epoch == 2
    epoch2 = list(sampler)
    resumed = TokenBatchSampler(lengths, 100, seed=3)
    resumed.resume(epoch=2, consumed=5)
    assert list(resumed) == epoch2[5:]  # continues exactly where the epoch was cut
    assert list(resumed) == epoch2  # and the next pass is a whole epoch again


def test_validation_sample_is_a_fixed_subset_and_the_test_split_stays_whole() -> None:
    from prunelab.data.classification import SyntheticClassificationDataModule

    full = SyntheticTranslationDataModule(train_size=50, valid_size=40, test_size=30)
    full.setup()
    sampled = SyntheticTranslationDataModule(train_size=50, valid_size=40, test_size=30, valid_max_sentences=12)
    sampled.setup()
    got = sampled.examples["valid"]
    assert len(got) == 12 and [e[3] for e in got] == sorted(e[3] for e in got)  # original order
    assert all(e == full.examples["valid"][e[3]] for e in got)  # the same examples, not new ones
    assert sampled.examples["test"] == full.examples["test"] and sampled.examples["train"] == full.examples["train"]
    again = SyntheticTranslationDataModule(train_size=50, valid_size=40, test_size=30, valid_max_sentences=12)
    again.setup()
    assert again.examples["valid"] == got  # the same seed, the same sample
    cls = SyntheticClassificationDataModule(train_size=60, valid_size=25, test_size=10, valid_max_sentences=7)
    cls.setup()
    assert len(cls.examples["valid"]) == 7 and len(cls.examples["test"]) == 10
    with pytest.raises(UserError, match="valid_max_sentences"):
        SyntheticTranslationDataModule(train_size=50, valid_size=40, test_size=30, valid_max_sentences=0).setup()
