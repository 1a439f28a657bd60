"""`data=parallel_text`: reading real-world corpus files, the SentencePiece cache, the user errors."""

from __future__ import annotations

import gzip
import logging
import random
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prunelab.data.sources import files as text_files
from prunelab.data.sources import subwords
from prunelab.data.sources.files import read_lines
from prunelab.data.tokenizer import BOS, EOS, PAD, UNK
from prunelab.data.translation import ParallelTextDataModule
from prunelab.errors import UserError

SRC_WORDS = ["the", "a", "small", "red", "house", "dog", "cat", "runs", "sees", "quickly", "on", "under", "and", "big"]
TGT_WORDS = ["der", "die", "das", "kleine", "rote", "haus", "hund", "katze", "läuft", "sieht", "schnell", "auf"]
CONF = Path(__file__).resolve().parents[2] / "conf" / "data" / "parallel_text.yaml"


def sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    src = [" ".join(rng.choices(SRC_WORDS, k=rng.randint(2, 9))) for _ in range(n)]
    tgt = [" ".join(rng.choices(TGT_WORDS, k=rng.randint(2, 9))) for _ in range(n)]
    return src, tgt


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def make_corpus(root: Path, sizes: tuple[int, int, int] = (150, 30, 30)) -> dict[str, tuple[list[str], list[str]]]:
    root.mkdir(parents=True, exist_ok=True)
    corpus = {}
    for seed, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        src, tgt = sentences(n, seed)
        write(root / f"{split}.en", src)
        write(root / f"{split}.de", tgt)
        corpus[split] = (src, tgt)
    return corpus


def dm(root: Path, **kwargs) -> ParallelTextDataModule:
    args = {"dir": str(root), "src_lang": "en", "tgt_lang": "de", "vocab_size": 80, "max_len": 64, **kwargs}
    return ParallelTextDataModule(**args)


def models(root: Path) -> list[Path]:
    return sorted(root.glob("spm.*.model"))


# --- reading ----------------------------------------------------------------------------------------------
def test_examples_round_trip_and_stay_aligned(tmp_path):
    corpus = make_corpus(tmp_path)
    d = dm(tmp_path)
    d.setup()
    tok = d.tokenizer
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (PAD, BOS, EOS, UNK) == (0, 1, 2, 3)
    assert 20 < tok.vocab_size <= 80
    for split, (src, tgt) in corpus.items():
        examples = d.examples[split]
        assert [e[3] for e in examples] == list(range(len(src)))
        for s_ids, t_ids, ref, i in examples:
            assert s_ids[-1] == EOS and EOS not in t_ids and BOS not in t_ids
            assert tok.decode(s_ids[:-1]) == src[i]
            assert tok.decode(t_ids) == tgt[i] == ref
            assert UNK not in s_ids and UNK not in t_ids
        assert d.references(split) == tgt


def test_crlf_bom_no_final_newline_and_padding_read_like_clean_files(tmp_path):
    clean, messy = tmp_path / "clean", tmp_path / "messy"
    corpus = make_corpus(clean)
    make_corpus(messy)
    for split, (src, tgt) in corpus.items():
        for lang, lines in (("en", src), ("de", tgt)):
            text = "\r\n".join(f"  {line}\t" for line in lines)  # CRLF, no final newline, stray whitespace
            (messy / f"{split}.{lang}").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    a, b = dm(clean), dm(messy)
    for split, lines in corpus.items():
        assert a.read_split(split) == b.read_split(split) == lines
    # same text after cleaning, but different bytes: each dir gets its own (equivalent) model
    a.setup()
    b.setup()
    assert [e[:2] for e in a.examples["train"]] == [e[:2] for e in b.examples["train"]]


def test_unicode_line_separators_inside_a_line_do_not_split_it(tmp_path):
    corpus = make_corpus(tmp_path)
    src, tgt = corpus["valid"]
    src[3] = "the red\u2028house"
    tgt[3] = "das rote\u2028haus\x85und\x0cder\x1cbaum\u2029"  # U+0085, form feed, file separator, U+2029
    write(tmp_path / "valid.en", src)
    write(tmp_path / "valid.de", tgt)
    d = dm(tmp_path)
    assert d.read_split("valid") == (src, [*tgt[:3], "das rote\u2028haus\x85und\x0cder\x1cbaum", *tgt[4:]])
    d.setup()
    examples = d.examples["valid"]
    assert len(examples) == len(tgt)
    assert examples[3][2].startswith("das rote\u2028haus") and examples[3][3] == 3
    assert examples[4][2] == tgt[4] and d.tokenizer.decode(examples[4][0][:-1]) == src[4]


def test_gzipped_split_is_read_when_the_plain_file_is_absent(tmp_path):
    corpus = make_corpus(tmp_path)
    dm(tmp_path).build_tokenizer()  # trains the model from the plain files
    (model,) = models(tmp_path)
    for split in ("train", "valid"):
        for lang in ("en", "de"):
            path = tmp_path / f"{split}.{lang}"
            with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
                f.write(path.read_bytes())
            path.unlink()
    d = dm(tmp_path)
    assert d.files["valid"] == (tmp_path / "valid.en.gz", tmp_path / "valid.de.gz")
    assert d.read_split("valid") == corpus["valid"]
    d.setup()
    assert d.references("train") == corpus["train"][1]
    # the cache key is the decompressed content: gzipping the training files does not retrain
    assert models(tmp_path) == [model]


def test_invalid_utf8_is_an_error_naming_file_line_and_byte(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "valid.de").write_bytes(b"ok\ncaf\xe9 au lait\n\xff\xfe\xfd broken\nfine\n")
    (tmp_path / "valid.en").write_bytes(b"a\nb\nc\nd\n")
    with pytest.raises(UserError) as err:
        dm(tmp_path).read_split("valid")
    assert str(err.value) == (
        f"{tmp_path / 'valid.de'}:2: not UTF-8 (byte 0xe9 at byte 4 of the line); convert the file "
        "(e.g. iconv -f latin1 -t utf-8) or set data.utf8_errors=replace"
    )


def test_invalid_utf8_is_replaced_and_logged_when_asked(tmp_path, caplog):
    make_corpus(tmp_path)
    (tmp_path / "valid.de").write_bytes(b"ok\ncaf\xe9 au lait\n\xff\xfe\xfd broken\nfine\n")
    (tmp_path / "valid.en").write_bytes(b"a\nb\nc\nd\n")
    d = dm(tmp_path, utf8_errors="replace")
    with caplog.at_level(logging.WARNING, logger=text_files.__name__):
        _, tgt = d.read_split("valid")
    assert tgt == ["ok", "caf\ufffd au lait", "\ufffd\ufffd\ufffd broken", "fine"]
    assert any("valid.de" in r.message and "2 lines" in r.message for r in caplog.records)
    d.setup()  # unknown characters encode as <unk>, they do not crash anything
    assert [e[3] for e in d.examples["valid"]] == [0, 1, 2, 3]


def test_empty_and_overlong_training_pairs_are_dropped_with_a_count(tmp_path, caplog):
    corpus = make_corpus(tmp_path)
    src, tgt = corpus["train"]
    src[5], tgt[9] = "", ""  # half-empty pairs
    src[7] = tgt[7] = ""
    src[11] = " ".join(["the small red house"] * 20)  # 80 words: longer than max_len=64 subwords
    write(tmp_path / "train.en", src)
    write(tmp_path / "train.de", tgt)
    vsrc, vtgt = corpus["valid"]
    vsrc[2] = vtgt[2] = ""
    write(tmp_path / "valid.en", vsrc)
    write(tmp_path / "valid.de", vtgt)
    d = dm(tmp_path)
    with caplog.at_level(logging.WARNING):
        d.setup()
    kept = [e[3] for e in d.examples["train"]]
    assert len(kept) == len(src) - 4 and not {5, 7, 9, 11} & set(kept)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "train: dropped 4 of 150 sentence pairs: 3 with an empty side, 1 longer than data.max_len=64 tokens"
    ]
    assert [e[3] for e in d.examples["valid"]] == list(range(len(vsrc)))
    assert d.examples["valid"][2][:3] == ([EOS], [], "")


# --- the SentencePiece cache ------------------------------------------------------------------------------
def test_model_is_cached_and_reused(tmp_path, monkeypatch):
    make_corpus(tmp_path)
    first = dm(tmp_path)
    first.setup()
    (model,) = models(tmp_path)
    mtime = model.stat().st_mtime_ns
    assert not list(tmp_path.glob(".spm*")), "temporary files left behind"

    def no_training(self):
        raise AssertionError("retrained although a cached model exists")

    monkeypatch.setattr(ParallelTextDataModule, "_train_spm", no_training)
    second = dm(tmp_path)
    second.prepare_data()
    second.setup()
    assert models(tmp_path) == [model] and model.stat().st_mtime_ns == mtime
    assert [e[:2] for e in second.examples["train"]] == [e[:2] for e in first.examples["train"]]


def test_cache_key_covers_settings_and_content(tmp_path):
    corpus = make_corpus(tmp_path)
    dm(tmp_path, vocab_size=80).build_tokenizer()
    dm(tmp_path, vocab_size=60).build_tokenizer()
    dm(tmp_path, vocab_size=60, spm_model_type="bpe").build_tokenizer()
    dm(tmp_path, vocab_size=60, spm_character_coverage=0.999).build_tokenizer()
    assert len(models(tmp_path)) == 4
    dm(tmp_path, vocab_size=60, max_len=10, seed=7).build_tokenizer()  # batching settings do not matter
    assert len(models(tmp_path)) == 4
    write(tmp_path / "train.de", [*corpus["train"][1][:-1], "der baum"])
    dm(tmp_path, vocab_size=60).build_tokenizer()
    assert len(models(tmp_path)) == 5


def test_training_is_deterministic(tmp_path):
    # concurrent trainers (DDP on several nodes sharing the data dir) must write identical models
    for name in ("a", "b"):
        make_corpus(tmp_path / name, sizes=(300, 10, 10))
        dm(tmp_path / name, spm_max_sentences=200).build_tokenizer()
    ((a,), (b,)) = models(tmp_path / "a"), models(tmp_path / "b")
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_explicit_cache_dir(tmp_path):
    make_corpus(tmp_path / "data")
    dm(tmp_path / "data", cache_dir=str(tmp_path / "cache" / "spm")).setup()
    assert not models(tmp_path / "data") and len(models(tmp_path / "cache" / "spm")) == 1


def test_falls_back_to_the_user_cache_when_the_data_dir_is_read_only(tmp_path, monkeypatch):
    data, home_cache = tmp_path / "data", tmp_path / "home" / "spm"
    make_corpus(data)
    monkeypatch.setattr(subwords, "FALLBACK_CACHE_DIR", home_cache)
    real_mkstemp = subwords.tempfile.mkstemp

    def mkstemp(dir, **kwargs):  # tests may run as root, for whom chmod does not make a dir read-only
        if Path(dir) == data:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(dir=dir, **kwargs)

    monkeypatch.setattr(subwords.tempfile, "mkstemp", mkstemp)
    dm(data).setup()
    assert not models(data) and len(models(home_cache)) == 1
    monkeypatch.setattr(ParallelTextDataModule, "_train_spm", lambda self: pytest.fail("retrained"))
    dm(data).setup()  # found in the fallback place


# --- user errors ------------------------------------------------------------------------------------------
def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"data directory not found: {tmp_path / 'nope'}")):
        dm(tmp_path / "nope")


def test_missing_split_file_names_the_path_and_the_prefix_option(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "valid.de").rename(tmp_path / "dev.de")
    (tmp_path / "valid.en").rename(tmp_path / "dev.en")
    with pytest.raises(UserError) as e:
        dm(tmp_path)
    assert str(tmp_path / "valid.en") in str(e.value) and "data.valid_prefix=" in str(e.value)
    assert "\n" not in str(e.value)
    assert dm(tmp_path, valid_prefix="dev").files["valid"] == (tmp_path / "dev.en", tmp_path / "dev.de")


def test_misaligned_split_names_both_files_and_counts(tmp_path):
    corpus = make_corpus(tmp_path)
    write(tmp_path / "test.de", corpus["test"][1] + ["ein zusätzlicher satz"])
    d = dm(tmp_path)
    with pytest.raises(UserError) as e:
        d.setup()
    msg = str(e.value)
    assert f"{tmp_path / 'test.en'} has 30 lines" in msg and f"{tmp_path / 'test.de'} has 31" in msg


@pytest.mark.parametrize("content", [b"", b"\n\n \r\n"])
def test_empty_training_file(tmp_path, content):
    make_corpus(tmp_path)
    (tmp_path / "train.de").write_bytes(content)
    with pytest.raises(UserError, match=re.escape(f"training file {tmp_path / 'train.de'} is empty")):
        dm(tmp_path).setup()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size must be positive"),
        ({"vocab_size": -5}, "vocab_size must be positive"),
        ({"spm_model_type": "wordpiece"}, "spm_model_type must be one of"),
        ({"spm_character_coverage": 0.0}, "spm_character_coverage"),
        ({"spm_max_sentences": -1}, "spm_max_sentences"),
    ],
)
def test_bad_settings(tmp_path, kwargs, match):
    make_corpus(tmp_path)
    with pytest.raises(UserError, match=match):
        dm(tmp_path, **kwargs)


def test_utf16_file_is_refused(tmp_path):
    path = tmp_path / "x.de"
    path.write_bytes("hallo\nwelt\n".encode("utf-16"))
    with pytest.raises(UserError, match="UTF-16"):
        read_lines(path)


def test_corrupt_gzip(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "valid.de").unlink()
    (tmp_path / "valid.de.gz").write_bytes(gzip.compress(b"hallo\n" * 30)[:-12])  # truncated
    with pytest.raises(UserError, match=r"cannot read .*valid\.de\.gz"):
        dm(tmp_path).read_split("valid")


# --- config -----------------------------------------------------------------------------------------------
def test_hydra_config_instantiates(tmp_path):
    from hydra.utils import instantiate

    make_corpus(tmp_path)
    cfg = OmegaConf.create({"seed": 5, "data": OmegaConf.load(CONF)})
    cfg.data.dir = str(tmp_path)
    cfg.data.vocab_size = 70
    d = instantiate(cfg.data)
    assert isinstance(d, ParallelTextDataModule)
    assert (d.src_lang, d.tgt_lang, d.seed, d.max_tokens, d.max_len) == ("en", "de", 5, 4096, 256)
    d.setup()
    assert len(d.examples["test"]) == 30
