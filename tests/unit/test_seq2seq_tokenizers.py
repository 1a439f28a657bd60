"""The sequence-to-sequence checkpoints' own tokenizers in prunelab's translation data: every source is what the
checkpoint's tokenizer makes of it (`hf(s)["input_ids"]`), every target what it makes of a target
(`hf(text_target=t)["input_ids"]`, with the data's languages set), and the decoder input what the checkpoint's own
model builds from those labels (`prepare_decoder_input_ids_from_labels` / `shift_tokens_right`), for T5, mT5, BART,
mBART-50, M2M100, NLLB-200 and Marian:

    T5 / mT5   X </s>                -> Y </s>                   decoder start <pad>
    BART       <s> X </s>            -> <s> Y </s>               decoder start </s>
    mBART-50   [en_XX] X </s>        -> [de_DE] Y </s>           decoder start </s>
    M2M100     [__en__] X </s>       -> [__de__] Y </s>          decoder start </s>
    NLLB-200   [eng_Latn] X </s>     -> [deu_Latn] Y </s>        decoder start </s>

and the language codes: derived from data.src_lang / tgt_lang (the code itself, or the one code of that language by
its ISO 639-1 or 639-3 name: en -> en_XX, __en__, eng_Latn) or given as data.src_code / tgt_code, with one error
line for a code the tokenizer lacks, a language with several codes, a multilingual tokenizer without languages, and
a framing prunelab's data cannot hold (NLLB's legacy X </s> [eng_Latn])."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prunelab.data.translation import HfTranslationDataModule, ParallelTextDataModule, SyntheticTranslationDataModule
from prunelab.errors import UserError
from prunelab.hf.tokenizer import PretrainedTokenizer
from tests import hf_checkpoints as H
from tests.hf_seq2seq import CODES

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["t5", "mt5", "bart", "mbart50", "m2m100", "nllb", "marian"]
# test sentences unlike the training text: unseen words, capitals, punctuation, digits, a long one
EXTRA = [
    ("The zebra sat, didn't it?", "Das Zebra sass, oder?"),
    ("a 42 big   red house", "ein 42 grosses rotes Haus"),
    (" ".join(["the cat sat on the mat"] * 6), " ".join(["die katze sass auf der matte"] * 6)),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    test = H.copy_pairs(10, 2)
    test = ([*test[0], *(s for s, _ in EXTRA)], [*test[1], *(t for _, t in EXTRA)])
    splits = {"train": H.copy_pairs(40, 0), "valid": H.copy_pairs(8, 1), "test": test}
    return H.write_parallel(tmp_path_factory.mktemp("corpus"), splits)


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return H.marian_checkpoint(tmp_path_factory.mktemp("marian"), *H.copy_pairs(40, 0), steps=0)


def folder_of(family: str, seq2seq_checkpoint: Callable[..., Path], marian: Path) -> Path:
    return marian if family == "marian" else seq2seq_checkpoint(family)


def hf_tokenizer(folder: Path, family: str) -> Any:
    """The checkpoint's tokenizer as transformers reads it, with the test data's languages set its way."""
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    if family in CODES:
        src, tgt = CODES[family]
        if family == "m2m100":  # M2M100's tokenizer names its languages without the underscores
            src, tgt = src.strip("_"), tgt.strip("_")
        hf.src_lang, hf.tgt_lang = src, tgt
    return hf


def hf_decoder_input(folder: Path, family: str, labels: torch.Tensor) -> torch.Tensor:
    """The decoder input the checkpoint's own model makes of `labels` (padded with -100, as in training)."""
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder)
    if family in ("m2m100", "nllb"):  # M2M100 has no prepare_decoder_input_ids_from_labels
        from transformers.models.m2m_100.modeling_m2m_100 import shift_tokens_right

        cfg = model.config
        return shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)
    return model.prepare_decoder_input_ids_from_labels(labels=labels)


@pytest.mark.parametrize("family", FAMILIES)
def test_examples_are_framed_as_the_checkpoint_frames_them(
    family: str, corpus: Path, seq2seq_checkpoint: Callable[..., Path], marian: Path
) -> None:
    folder = folder_of(family, seq2seq_checkpoint, marian)
    dm = ParallelTextDataModule(dir=str(corpus), src_lang="en", tgt_lang="de", tokenizer=str(folder))
    dm.prepare_data()
    dm.setup()
    assert not list(corpus.glob("spm.*"))  # the checkpoint's tokenizer, no SentencePiece model of the data's
    hf = hf_tokenizer(folder, family)
    tok = dm.tokenizer
    src, tgt = dm.read_split("test")
    for (s_ids, t_ids, ref, _), s, t in zip(dm.examples["test"], src, tgt, strict=True):
        assert s_ids == hf(s)["input_ids"]
        assert [*t_ids, tok.eos_id] == hf(text_target=t)["input_ids"]
        assert ref == t
    # every target starts with the tokenizer's target prefix: [de_DE] for mBART-50, <s> for BART, nothing for T5
    framed = hf(text_target="")["input_ids"]
    assert list(tok.target_prefix) == framed[: len(framed) - 1]
    # the batch as HF builds it: sources, labels, and the decoder input the checkpoint's model makes of the labels
    enc = hf(src, text_target=tgt, padding=True, return_tensors="pt")
    batch = dm.collate_fn()(dm.examples["test"])
    torch.testing.assert_close(batch["src"], enc["input_ids"])
    torch.testing.assert_close(batch["tgt_out"], enc["labels"])
    real = enc["labels"] != tok.pad_id
    shifted = hf_decoder_input(folder, family, enc["labels"].masked_fill(~real, -100))
    torch.testing.assert_close(batch["tgt_in"][real], shifted[real])
    # hypotheses decode without the codes and special tokens: the references come back
    assert [tok.decode(t) for t in enc["labels"].tolist()[:10]] == tgt[:10]


# the codes a run's languages give, per family: (src_lang, tgt_lang, src_code, tgt_code) -> the code tokens
CODE_CASES = {
    "mbart50_languages": ("mbart50", dict(src_lang="en", tgt_lang="de"), ("en_XX", "de_DE")),
    "mbart50_exact_codes_as_languages": ("mbart50", dict(src_lang="de_DE", tgt_lang="fr_XX"), ("de_DE", "fr_XX")),
    "mbart50_codes_over_languages": (
        "mbart50",
        dict(src_lang="en", tgt_lang="de", src_code="ro_RO", tgt_code="ja_XX"),
        ("ro_RO", "ja_XX"),
    ),
    "m2m100_languages": ("m2m100", dict(src_lang="en", tgt_lang="fr"), ("__en__", "__fr__")),
    "m2m100_tokens": ("m2m100", dict(src_lang="__de__", tgt_lang="__en__"), ("__de__", "__en__")),
    "nllb_exact": ("nllb", dict(src_lang="eng_Latn", tgt_lang="zho_Hant"), ("eng_Latn", "zho_Hant")),
    "nllb_iso_639_1": ("nllb", dict(src_lang="en", tgt_lang="de"), ("eng_Latn", "deu_Latn")),
    "nllb_iso_639_3": ("nllb", dict(src_lang="deu", tgt_lang="fra"), ("deu_Latn", "fra_Latn")),
    "mbart50_iso_639_3": ("mbart50", dict(src_lang="eng", tgt_lang="jpn"), ("en_XX", "ja_XX")),
    "nllb_codes": ("nllb", dict(src_lang="en", tgt_lang="de", tgt_code="zho_Hans"), ("eng_Latn", "zho_Hans")),
}


@pytest.mark.parametrize("case", list(CODE_CASES))
def test_language_codes(case: str, seq2seq_checkpoint: Callable[..., Path]) -> None:
    family, asked, (src_code, tgt_code) = CODE_CASES[case]
    folder = seq2seq_checkpoint(family)
    tok = PretrainedTokenizer(folder, **asked)
    assert (tok.src_code, tok.tgt_code) == (src_code, tgt_code)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    src_id, tgt_id = hf.convert_tokens_to_ids(src_code), hf.convert_tokens_to_ids(tgt_code)
    assert hf.unk_token_id not in (src_id, tgt_id)
    # the code is the first token of the framing (prefixed), the EOS the last
    assert tok.encode("the cat")[0] == src_id and tok.encode_target("die katze")[0] == tgt_id
    assert tuple(tok.target_prefix) == (tgt_id,) and tok.target_code_id == tgt_id
    assert tok.eos_id not in tok.encode("the cat")


@pytest.mark.parametrize(
    ("family", "asked", "error"),
    [
        ("mbart50", dict(src_lang="xx", tgt_lang="de"), r"data\.src_lang=xx: .* no language code 'xx'"),
        ("mbart50", dict(src_lang="en", tgt_lang="de", tgt_code="de"), r"data\.tgt_code=de: not a .*close: de_DE"),
        ("m2m100", dict(src_lang="en", tgt_lang="de", tgt_code="__deu__"), r"data\.tgt_code=__deu__: .*close: __de__"),
        # Arabic's macrolanguage code: NLLB has its varieties, which one is the user's to say
        ("nllb", dict(src_lang="ar", tgt_lang="de"), r"data\.src_lang=ar: .*close: arb_Arab, ars_Arab"),
        ("nllb", dict(src_lang="en", tgt_lang="zh"), r"data\.tgt_lang=zh: .*several .* \(zho_Hans, zho_Hant\)"),
        ("nllb", dict(src_lang="en", tgt_lang="de", src_code="eng"), r"data\.src_code=eng: not a .*close: eng_Latn"),
        ("t5", dict(src_lang="en", tgt_lang="de", src_code="en_XX"), r"data\.src_code=en_XX: .* no language codes"),
    ],
)
def test_language_code_errors(
    family: str, asked: dict[str, str], error: str, seq2seq_checkpoint: Callable[..., Path]
) -> None:
    with pytest.raises(UserError, match=error) as e:
        PretrainedTokenizer(seq2seq_checkpoint(family), **asked)
    assert "\n" not in str(e.value)


def test_a_multilingual_tokenizer_needs_languages(seq2seq_checkpoint: Callable[..., Path]) -> None:
    """Read without languages (a classifier's tokenizer, a look at the vocabulary) it loads; its first text encoded
    is the error naming the settings, as is translation data without languages of its own."""
    folder = seq2seq_checkpoint("mbart50")
    tok = PretrainedTokenizer(folder)
    for use in (lambda: tok.encode("the cat"), lambda: tok.encode_target("die katze"), lambda: tok.target_prefix):
        with pytest.raises(UserError, match=r"multilingual \(52 language codes.*data\.src_lang.*data\.src_code"):
            use()
    # the synthetic pair names no languages: its data cannot frame a multilingual checkpoint's examples
    dm = SyntheticTranslationDataModule(train_size=20, valid_size=5, test_size=5, tokenizer=str(folder))
    with pytest.raises(UserError, match=r"multilingual .*data\.src_lang.*data\.src_code"):
        dm.prepare_data()
        dm.setup()
    # given, the codes alone do
    dm = SyntheticTranslationDataModule(
        train_size=20, valid_size=5, test_size=5, tokenizer=str(folder), src_code="en_XX", tgt_code="de_DE"
    )
    dm.prepare_data()
    dm.setup()
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    assert {e[0][0] for e in dm.examples["test"]} == {hf.convert_tokens_to_ids("en_XX")}


def test_nllb_legacy_framing_is_refused(seq2seq_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """NLLB's legacy_behaviour puts the code after </s> (X </s> [eng_Latn]): prunelab's data ends every sentence
    in EOS, so such a tokenizer is one error when it encodes, naming the setting."""
    folder = shutil.copytree(seq2seq_checkpoint("nllb"), tmp_path / "legacy")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "legacy_behaviour": True}))
    hf = transformers.AutoTokenizer.from_pretrained(folder, src_lang="eng_Latn")
    assert hf("the cat")["input_ids"][-2:] == [hf.eos_token_id, hf.convert_tokens_to_ids("eng_Latn")]
    tok = PretrainedTokenizer(folder, src_lang="eng_Latn", tgt_lang="deu_Latn")
    with pytest.raises(UserError, match=r"frames a source text as `X </s> eng_Latn`.*legacy_behaviour") as e:
        tok.encode("the cat")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("option", ["parallel_text", "hf_translation"])
def test_data_options_reach_the_tokenizer(
    option: str, corpus: Path, seq2seq_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """conf/data/{option}.yaml's src_code / tgt_code (null by default: from the languages) reach the tokenizer."""
    datasets = pytest.importorskip("datasets")
    folder = seq2seq_checkpoint("m2m100")
    data = OmegaConf.load(ROOT / "conf" / "data" / f"{option}.yaml")
    assert data.src_code is None and data.tgt_code is None
    if option == "parallel_text":
        data.dir = str(corpus)
    else:
        pairs = {
            split: datasets.Dataset.from_dict(
                {"translation": [{"en": s, "de": t} for s, t in zip(*H.copy_pairs(12, seed), strict=True)]}
            )
            for seed, split in enumerate(("train", "validation", "test"))
        }
        datasets.DatasetDict(pairs).save_to_disk(str(tmp_path / "ds"))
        data.name = str(tmp_path / "ds")
    cfg = OmegaConf.create({"seed": 0, "model": {"path": str(folder)}, "data": data})
    dm = instantiate(cfg.data)
    assert isinstance(dm, ParallelTextDataModule | HfTranslationDataModule)
    assert (dm.tokenizer.src_code, dm.tokenizer.tgt_code) == ("__en__", "__de__")
    cfg.data.tgt_code = "__fr__"
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    fr = hf.convert_tokens_to_ids("__fr__")
    assert dm.tokenizer.target_code_id == fr
    assert all(t_ids[0] == fr for _, t_ids, _, _ in dm.examples["test"])
