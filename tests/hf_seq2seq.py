"""Tiny sequence-to-sequence checkpoints of the families researchers translate with, made here, offline, with the
original libraries: T5 v1.0 / v1.1 / mT5, BART and mBART-50, M2M100 and NLLB-200. Each has its family's own
tokenizer, built from a SentencePiece (or byte-level BPE) model trained on the test's sentences with the special ids
and language codes of the real one, and its own model class from a tiny config; optionally trained a little by
Hugging Face itself on copy-translation pairs (tests.hf_checkpoints.copy_pairs), and saved with `save_pretrained`
with a generation_config.json like the real checkpoints' (4 beams here, so that beam search is what parity tests
exercise), so that `AutoTokenizer.from_pretrained(folder)` and `AutoModelForSeq2SeqLM.from_pretrained(folder)` read
them back as a hub folder would be read.

    t5_checkpoint(folder, src, tgt, variant="v1.0" | "v1.1" | "mt5")
    bart_checkpoint(folder, src, tgt, variant="bart" | "mbart50")
    m2m100_checkpoint(folder, src, tgt, variant="m2m100" | "nllb")
    seq2seq_checkpoint (session fixture): build(family_variant, steps=0, seed=0) -> the folder, built once a session

The special ids are the real checkpoints': T5 pad 0 (also the decoder start), </s> 1, <unk> 2; the fairseq
families <s> 0, <pad> 1, </s> 2 (the decoder start), <unk> 3, then the pieces, then the language codes.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.hf_checkpoints import bpe_tokenizer, copy_pairs, hf_train

T5_VARIANTS = ("v1.0", "v1.1", "mt5")
BART_VARIANTS = ("bart", "mbart50")
M2M100_VARIANTS = ("m2m100", "nllb")
# the language codes a test data set speaks, per family: (source, target) as data.src_lang/tgt_lang name them,
# and the codes the tokenizers spell them with
LANGS = ("en", "de")
CODES = {
    "mbart50": ("en_XX", "de_DE"),
    "m2m100": ("__en__", "__de__"),
    "nllb": ("eng_Latn", "deu_Latn"),
}
# a third language every multilingual tokenizer here has: what a test forces when it wants another code than the
# one the model learnt to start its targets with
OTHER_CODE = {"mbart50": "fr_XX", "m2m100": "__fr__", "nllb": "fra_Latn"}
SHAPE = dict(d_model=32, layers=2, heads=4, ffn=64, max_positions=64)


def train_spm(sentences: list[str], path: Path, pieces: int, model_type: str, **ids: int) -> Path:
    """A SentencePiece model trained on `sentences` (`ids`: its special ids, e.g. pad_id=0, eos_id=1, unk_id=2,
    bos_id=-1 as T5's spiece.model), written to `path`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=pieces,
        model_type=model_type,
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def generation_config(**settings: Any) -> Any:
    """A GenerationConfig as the real checkpoints' generation_config.json: 4 beams, at most 64 tokens, then
    `settings` (the family's special ids and extras)."""
    import transformers

    return transformers.GenerationConfig(**{"num_beams": 4, "max_length": 64, **settings})


def train_and_save(model: Any, tok: Any, folder: Path, src: list[str], tgt: list[str], steps: int, lr: float) -> Path:
    """`model` trained by HF for `steps` steps on (src, tgt) batches as `tok` frames them (labels: its target
    framing, padding ignored), then saved with `tok` in `folder`."""
    batches = [
        tok(src[i : i + 16], text_target=tgt[i : i + 16], padding=True, return_tensors="pt")
        for i in range(0, len(src), 16)
    ]
    for b in batches:  # HF ignores label positions of -100 (padding)
        b["labels"][b["labels"] == tok.pad_token_id] = -100
    if steps:
        hf_train(model, batches, steps, lr=lr)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- T5 / mT5 --------------------------------------------------------------------------------------------------
def t5_tokenizer(sentences: list[str], folder: Path, extra_ids: int = 4, pieces: int = 60) -> Any:
    """T5's layout: spiece.model (unigram; <pad> 0, </s> 1, <unk> 2, no <s>) and `extra_ids` sentinels
    <extra_id_N> after the pieces, as T5Tokenizer reads it."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    train_spm(sentences, folder / "spiece.model", pieces, "unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    return transformers.T5Tokenizer.from_pretrained(str(folder), extra_ids=extra_ids)


def t5_checkpoint(
    folder: Path, src: list[str], tgt: list[str], variant: str = "v1.0", steps: int = 150, seed: int = 0
) -> Path:
    """A tiny T5 trained by HF on (src, tgt) for `steps` steps (no task prefix: the pairs as they are).
    v1.0: ReLU feed-forward, tied embeddings (the output rescaled by d_model^-0.5), 4 heads of 8;
    v1.1: gated-GELU, untied, 3 heads of 8 (inner width 24 != d_model 32); mt5: MT5's classes, gated-GELU, untied,
    4 heads of 8, no sentinels. Relative positions: 8 buckets up to distance 20, so that short sentences reach the
    logarithmic buckets and long ones the last. The embedding table is padded past the tokenizer to a multiple of 8
    (as T5's 32128 rows for 32100 tokens)."""
    import transformers

    if variant not in T5_VARIANTS:
        raise ValueError(f"T5 variant {variant!r}: one of {T5_VARIANTS}")
    torch.manual_seed(seed)
    tok = t5_tokenizer(src + tgt, folder, extra_ids=0 if variant == "mt5" else 4)
    gated = variant != "v1.0"
    config_class = transformers.MT5Config if variant == "mt5" else transformers.T5Config
    model_class = (
        transformers.MT5ForConditionalGeneration if variant == "mt5" else transformers.T5ForConditionalGeneration
    )
    config = config_class(
        vocab_size=-(-len(tok) // 8) * 8,
        d_model=32,
        d_kv=8,
        num_heads=3 if variant == "v1.1" else 4,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
        dropout_rate=0.0,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    model = model_class(config)
    model.generation_config = generation_config(
        decoder_start_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    return train_and_save(model, tok, folder, src, tgt, steps, lr=1e-2)


# --- BART / mBART-50 -------------------------------------------------------------------------------------------
def mbart50_tokenizer(sentences: list[str], folder: Path, pieces: int = 60) -> Any:
    """mBART-50's layout: sentencepiece.bpe.model (BPE; <unk> 0, <s> 1, </s> 2 in the SentencePiece model, shifted
    by fairseq's offset to <s> 0, <pad> 1, </s> 2, <unk> 3), the pieces, the 52 language codes (en_XX, de_DE,
    fr_XX, ...) and <mask>, with en_XX -> de_DE as its languages."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    train_spm(sentences, folder / "sentencepiece.bpe.model", pieces, "bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    src, tgt = CODES["mbart50"]
    return transformers.MBart50Tokenizer.from_pretrained(str(folder), src_lang=src, tgt_lang=tgt)


def bart_checkpoint(
    folder: Path, src: list[str], tgt: list[str], variant: str = "bart", steps: int = 150, seed: int = 0
) -> Path:
    """A tiny BART or mBART-50 trained by HF on (src, tgt). bart: byte-level BPE (vocab.json + merges.txt), post-norm,
    GELU, unscaled embeddings, <s> Y </s> targets with forced_bos_token_id <s> as bart-large. mbart50:
    MBart50Tokenizer ([en_XX] X </s> -> [de_DE] Y </s>), pre-norm with final norms, scale_embedding. Both: learned
    positions (offset 2), decoder start </s> (2), forced_eos_token_id </s>."""
    import transformers

    if variant not in BART_VARIANTS:
        raise ValueError(f"BART variant {variant!r}: one of {BART_VARIANTS}")
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if variant == "bart":
        bpe_tokenizer(src + tgt, folder / "_bpe")
        tok = transformers.BartTokenizer(
            vocab=str(folder / "_bpe" / "vocab.json"), merges=str(folder / "_bpe" / "merges.txt")
        )
        shutil.rmtree(folder / "_bpe")
    else:
        tok = mbart50_tokenizer(src + tgt, folder)
    ids = dict(
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
        forced_eos_token_id=tok.eos_token_id,
    )
    shape = dict(
        vocab_size=len(tok),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="gelu",
        max_position_embeddings=64,
        dropout=0.0,
        **ids,
    )
    if variant == "bart":
        config = transformers.BartConfig(scale_embedding=False, forced_bos_token_id=tok.cls_token_id, **shape)
        model = transformers.BartForConditionalGeneration(config)
        gen = generation_config(
            forced_bos_token_id=tok.cls_token_id, early_stopping=True, no_repeat_ngram_size=3, length_penalty=2.0, **ids
        )
    else:
        config = transformers.MBartConfig(scale_embedding=True, **shape)
        model = transformers.MBartForConditionalGeneration(config)
        gen = generation_config(early_stopping=True, **ids)
    model.generation_config = gen
    return train_and_save(model, tok, folder, src, tgt, steps, lr=5e-3)


# --- M2M100 / NLLB-200 -----------------------------------------------------------------------------------------
def m2m100_tokenizer(sentences: list[str], folder: Path, pieces: int = 60) -> Any:
    """M2M100's layout: vocab.json (<s> 0, <pad> 1, </s> 2, <unk> 3, then the SentencePiece pieces) and
    sentencepiece.bpe.model; its 100 language codes __af__ ... __zu__ follow the vocabulary (then 8 made-up words in
    the model's table, none in the tokenizer: len(tokenizer) counts neither). Languages en -> de (M2M100's
    tokenizer names them without underscores)."""
    import sentencepiece as spm
    import transformers
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    model = train_spm(
        sentences, folder / "sentencepiece.bpe.model", pieces, "bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1
    )
    sp = spm.SentencePieceProcessor(model_file=str(model))
    vocab = ["<s>", "<pad>", "</s>", "<unk>", *(sp.id_to_piece(i) for i in range(3, sp.get_piece_size()))]
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab)}))
    # the codes as the hub's tokenizer_config.json lists them: special tokens (decoding skips them)
    codes = [f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    return transformers.M2M100Tokenizer(
        str(folder / "vocab.json"),
        str(model),
        src_lang=LANGS[0],
        tgt_lang=LANGS[1],
        additional_special_tokens=codes,
    )


def nllb_tokenizer(sentences: list[str], folder: Path, pieces: int = 60) -> Any:
    """NLLB-200's layout: sentencepiece.bpe.model (as mBART's: fairseq's offset), the pieces, its 202 language codes
    (eng_Latn, deu_Latn, fra_Latn, zho_Hans, zho_Hant, ...) and <mask>; the non-legacy framing [code] X </s>."""
    import transformers
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    folder.mkdir(parents=True, exist_ok=True)
    train_spm(sentences, folder / "sentencepiece.bpe.model", pieces, "bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    src, tgt = CODES["nllb"]
    # the codes as the hub's tokenizer.json has them: added special tokens after the pieces (from a bare
    # SentencePiece model, transformers adds them only when told)
    return transformers.NllbTokenizer.from_pretrained(
        str(folder),
        src_lang=src,
        tgt_lang=tgt,
        legacy_behaviour=False,
        additional_special_tokens=list(FAIRSEQ_LANGUAGE_CODES),
    )


def m2m100_checkpoint(
    folder: Path, src: list[str], tgt: list[str], variant: str = "m2m100", steps: int = 150, seed: int = 0
) -> Path:
    """A tiny M2M100ForConditionalGeneration (M2M100 or NLLB-200's tokenizer) trained by HF on (src, tgt): sinusoidal
    positions (offset 2), pre-norm with final norms, ReLU, scale_embedding, decoder start </s>; 64 positions."""
    import transformers

    if variant not in M2M100_VARIANTS:
        raise ValueError(f"M2M100 variant {variant!r}: one of {M2M100_VARIANTS}")
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tok = m2m100_tokenizer(src + tgt, folder) if variant == "m2m100" else nllb_tokenizer(src + tgt, folder)
    ids = dict(
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id,
    )
    # M2M100's table: the vocabulary, its language codes, 8 made-up words (len(tok) counts only the first)
    rows = tok.vocab_size + len(tok.lang_token_to_id) + tok.num_madeup_words if variant == "m2m100" else len(tok)
    config = transformers.M2M100Config(
        vocab_size=rows,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        activation_function="relu",
        max_position_embeddings=64,
        scale_embedding=True,
        dropout=0.0,
        attention_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        **ids,
    )
    model = transformers.M2M100ForConditionalGeneration(config)
    model.generation_config = generation_config(early_stopping=True, **ids)
    return train_and_save(model, tok, folder, src, tgt, steps, lr=1e-2)


# --- one place to build them -----------------------------------------------------------------------------------
BUILDERS: dict[str, tuple[Callable[..., Path], str]] = {
    "t5": (t5_checkpoint, "v1.0"),
    "t5_v1.1": (t5_checkpoint, "v1.1"),
    "mt5": (t5_checkpoint, "mt5"),
    "bart": (bart_checkpoint, "bart"),
    "mbart50": (bart_checkpoint, "mbart50"),
    "m2m100": (m2m100_checkpoint, "m2m100"),
    "nllb": (m2m100_checkpoint, "nllb"),
}


def build(name: str, folder: Path, steps: int = 150, seed: int = 0, pairs: int = 64) -> Path:
    """The checkpoint `name` (a key of BUILDERS) in `folder`, trained for `steps` steps on `pairs` copy pairs."""
    builder, variant = BUILDERS[name]
    src, tgt = copy_pairs(pairs, seed)
    return builder(folder, src, tgt, variant=variant, steps=steps, seed=seed)


@pytest.fixture(scope="session")
def seq2seq_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """build(name, steps=0, seed=0) -> the folder of that checkpoint (see BUILDERS), built once per session and
    shared by every test that asks for it: treat it as read-only (copy it to change it)."""
    root = tmp_path_factory.mktemp("seq2seq")
    made: dict[tuple[str, int, int], Path] = {}

    def get(name: str, steps: int = 0, seed: int = 0) -> Path:
        key = (name, steps, seed)
        if key not in made:
            made[key] = build(name, root / f"{name}-{steps}-{seed}", steps=steps, seed=seed)
        return made[key]

    return get
