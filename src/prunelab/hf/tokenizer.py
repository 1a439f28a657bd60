"""A pretrained checkpoint's own tokenizer (`PretrainedTokenizer`, the data modules' one entry here): read from the
checkpoint's folder with transformers' AutoTokenizer, its special ids, its own framing of translation examples and
language codes. `transformers` is imported only when one is built.

Floor: hf/ (it reads folders with prunelab.hf.checkpoint and codes with prunelab.hf.languages)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunelab.errors import UserError
from prunelab.hf.checkpoint import resolve_checkpoint
from prunelab.hf.languages import hf_language, language_codes, resolve_code

# The files a Hugging Face tokenizer is read from (besides SentencePiece *.model files).
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "source.spm",
    "spiece.model",
    "sentencepiece.bpe.model",
)


class PretrainedTokenizer:
    """A pretrained checkpoint's own tokenizer, read from its local folder with transformers' AutoTokenizer:
    BERT's WordPiece (vocab.txt), RoBERTa's byte-level BPE (vocab.json + merges.txt), any `tokenizer.json`, and
    Marian's source/target SentencePiece models with their vocab.json. Its special ids are the checkpoint's:

        bos_id  the decoder's start token for an encoder-decoder (config.json `decoder_start_token_id`, Marian: pad),
                else [CLS] (BERT 101, RoBERTa <s> = 0)
        eos_id  [SEP] where there is one (BERT 102, RoBERTa </s> = 2), else </s> (Marian 0)

    Classification inputs are framed by the tokenizer itself ([CLS] a [SEP] b [SEP] for BERT with token types,
    <s> a </s></s> b </s> for RoBERTa), truncated as it does (longest first). It is a `prunelab.data.tokenizer.
    Tokenizer`.

    Translation examples are framed as the checkpoint frames them: `encode(s) + [eos]` is `hf(s)["input_ids"]` and
    `encode_target(t) + [eos]` is `hf(text_target=t)["input_ids"]`: X </s> (Marian, T5), <s> X </s> (BART),
    [en_XX] X </s> -> [de_DE] Y </s> (mBART-50), [__en__] X </s> (M2M100), [eng_Latn] X </s> (NLLB-200). The
    framing is learnt from the tokenizer itself (`source_prefix`, `target_prefix`: what it puts before a text; a
    framing that does not end in EOS alone, such as NLLB's legacy X </s> [eng_Latn], is refused when text is
    encoded). A multilingual tokenizer takes its codes from the data's languages (`src_lang`, `tgt_lang`: the code
    itself or its language, en -> en_XX) or from `src_code` / `tgt_code` (prunelab.hf.languages);
    `target_code_id` is the target's code, which decoding forces as the first token (transformers'
    forced_bos_token_id)."""

    # what a tokenizer built without __init__'s framing (a subclass's) puts around a text: nothing
    source_prefix: tuple[int, ...] = ()
    _target_prefix: tuple[int, ...] = ()
    target_code_id: int | None = None
    _framing_error: str | None = None

    def __init__(
        self,
        path: str | Path,
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        src_code: str | None = None,
        tgt_code: str | None = None,
    ):
        folder = self._load(path)
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        hf = self.hf
        start = config.get("decoder_start_token_id") if config.get("is_encoder_decoder") else None
        ids = {
            "pad": hf.pad_token_id,
            "bos": start
            if start is not None
            else (hf.cls_token_id if hf.cls_token_id is not None else hf.bos_token_id),
            "eos": hf.sep_token_id if hf.sep_token_id is not None else hf.eos_token_id,
        }
        if missing := [k for k, v in ids.items() if v is None]:
            raise UserError(f"the tokenizer in {folder} has no {' / '.join(missing)} token")
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self.types = "token_type_ids" in hf.model_input_names  # BERT's segments; RoBERTa and Marian have none
        self.codes = language_codes(hf)  # {code: id}; empty for a tokenizer of one language pair
        where = str(folder)
        self.src_code, self.tgt_code = (
            None if self.codes and code is None and lang is None else resolve_code(self.codes, code, lang, side, where)
            for side, code, lang in (("src", src_code, src_lang), ("tgt", tgt_code, tgt_lang))
        )
        if self.codes and (self.src_code is None or self.tgt_code is None):
            # a multilingual tokenizer read without languages (a classifier's, a look at its vocabulary) frames no
            # translation: the error (which settings to give) waits for the first text encoded
            try:
                resolve_code(self.codes, None, None, "src" if self.src_code is None else "tgt", where)
            except UserError as e:
                self._framing_error = str(e)
            return
        if self.src_code is not None and self.tgt_code is not None:
            hf.src_lang = hf_language(hf, self.src_code)
            hf.tgt_lang = hf_language(hf, self.tgt_code)
        self.source_prefix = self._prefix(folder, target=False)
        self._target_prefix = self._prefix(folder, target=True)
        first = self._target_prefix[:1]
        self.target_code_id = first[0] if first and first[0] in self.codes.values() else None

    def _prefix(self, folder: Path, target: bool) -> tuple[int, ...]:
        """What the tokenizer puts before a source (a target) text, learnt from its framing of a probe text:
        prefix + ids + [eos]. Any other framing is remembered as the error of the first text encoded."""
        probe = "a b"
        kwargs: dict[str, Any] = {"text_target": probe} if target else {"text": probe}
        framed = list(self.hf(**kwargs)["input_ids"])
        bare = list(self.hf(**kwargs, add_special_tokens=False)["input_ids"])
        at = next((i for i in range(len(framed) - len(bare) + 1) if framed[i : i + len(bare)] == bare), None)
        if at is None or framed[at + len(bare) :] != [self.eos_id]:
            tokens = self.hf.convert_ids_to_tokens(framed)
            if at is not None:  # the text itself as X: `[prefix] X [suffix]`
                tokens = [*tokens[:at], "X", *tokens[at + len(bare) :]]
            shown = " ".join(map(str, tokens))
            self._framing_error = self._framing_error or (
                f"the tokenizer in {folder} frames a {'target' if target else 'source'} text as `{shown}`: prunelab's "
                f"translation data needs [prefix] text {self.hf.convert_ids_to_tokens(self.eos_id)}, ending in its "
                "end-of-sentence token (an NLLB tokenizer: set legacy_behaviour to false in its tokenizer_config.json)"
            )
            return ()
        return tuple(framed[:at])

    @property
    def target_prefix(self) -> tuple[int, ...]:
        """The ids every target starts with (mBART-50: its target language code; BART: <s>; Marian, T5: none)."""
        self._check_framing()
        return self._target_prefix

    def _check_framing(self) -> None:
        if self._framing_error is not None:
            raise UserError(self._framing_error)

    def _load(self, path: str | Path) -> Path:
        """Read the checkpoint's tokenizer: `hf`, `folder`, `unk_id` and `max_positions` (the one place a checkpoint's
        tokenizer is read; a subclass gives the special ids of its kind of model) -> the checkpoint's local folder."""
        folder = resolve_checkpoint(path)  # a local folder, or a hub id through the Hugging Face cache
        # transformers builds an empty tokenizer from a config alone: without vocabulary files, stop here
        if not any((folder / name).is_file() for name in VOCABULARY_FILES) and not list(folder.glob("*.model")):
            raise UserError(
                f"cannot load the tokenizer in {folder}: it has none of {', '.join(VOCABULARY_FILES)} (copy the "
                "checkpoint's tokenizer files next to its weights, or set data.tokenizer=<a folder with them>)"
            )
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UserError("reading a checkpoint's tokenizer needs transformers: pip install -e '.[hf]'") from None
        try:
            with warnings.catch_warnings():  # MarianTokenizer recommends sacremoses, which its decoding does not need
                warnings.filterwarnings("ignore", message=".*sacremoses")
                self.hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a folder it cannot read
            raise UserError(f"cannot load the tokenizer in {folder}: {' '.join(str(e).split())[:300]}") from e
        hf = self.hf
        self.unk_id = hf.unk_token_id if hf.unk_token_id is not None else -1  # byte-level BPE may have none
        # the longest input its model was trained on (512 for BERT and OPUS-MT); None when the tokenizer does not say
        self.max_positions = hf.model_max_length if hf.model_max_length < 1_000_000 else None
        hf.model_max_length = 1 << 30  # prunelab truncates itself; no warning per long sentence
        self.folder = folder
        return folder

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        """A source text's ids as the checkpoint frames it, without the final EOS (the data module appends it)."""
        self._check_framing()
        return [*self.source_prefix, *self.hf(text, add_special_tokens=False)["input_ids"]]

    def encode_target(self, text: str) -> list[int]:
        """A target text's ids as the checkpoint frames it (its target prefix first), without the final EOS."""
        self._check_framing()
        return [*self._target_prefix, *self.hf(text_target=text, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.hf.decode(list(ids), skip_special_tokens=True))

    def classification_input(self, parts: Sequence[str], max_len: int) -> tuple[list[int], list[int] | None, bool]:
        if len(parts) > 2:
            raise ValueError(f"a classification input is one text or a pair, got {len(parts)} parts")
        kwargs = {"return_token_type_ids": self.types, "return_attention_mask": False}
        enc = self.hf(*parts, **kwargs)
        truncated = len(enc["input_ids"]) > max_len
        if truncated:
            enc = self.hf(*parts, truncation=True, max_length=max_len, **kwargs)
        types = list(enc["token_type_ids"]) if self.types else None
        return list(enc["input_ids"]), types, truncated
