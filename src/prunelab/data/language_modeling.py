"""Causal language-modeling data (`task=language_modeling`, floor: data): text as documents, one token stream per
split, cut into windows as the pruning literature measures perplexity (SparseGPT, Frantar & Alistarh 2023; Wanda,
Sun et al. 2024). The windows and their batches are `windows.py`'s; this module holds the data module of this kind
and every source of it.

Stream, one of two protocols (`STREAMS`; results.json's `perplexity_protocol.stream` says which a run used):
    joined: the pruning literature's. A split's whole text is tokenized in one call, exactly as SparseGPT and Wanda
        tokenize wikitext (`tokenizer("\\n\\n".join(rows))["input_ids"]`): a checkpoint's tokenizer is called on the
        text as it is, its own special tokens included (BOS first for Llama and OPT, nothing for GPT-2), no separator
        inserted; without a checkpoint, [BOS if data.bos] + encode(text). `data=hf_lm` with `data.join` set (the
        default), `data=lm_text data.documents=joined` (each file's text as stored).
    eos: a split's text is a list of documents; its token stream is, per document in order, the tokenizer's ids of
        the document (no special tokens) followed by the EOS id, the document separator. A document with no tokens
        adds nothing. With `data.bos=true` the stream starts with the BOS id. `data=lm_text`'s other document modes
        (blank_lines, the default, lines, file), `data=hf_lm data.join=null`, `data=synthetic_lm`. A model never
        trained with EOS between documents is charged for every inserted EOS: perplexities differ from the papers'.

Sources: `data=lm_text` (train/valid/test .txt files: documents separated by blank lines, or `documents=joined`, each
file's text tokenized whole), `data=hf_lm` (a `datasets` split, e.g. wikitext-2-raw-v1: rows joined with "\\n\\n" and
tokenized whole, as SparseGPT/Wanda's wikitext evaluation), `data=synthetic_lm` (the embedded synthetic language's
sentences; no files, no network).
"""

from __future__ import annotations

import logging
import random
from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from prunelab.data.base import DataModule
from prunelab.data.sources.files import TextFiles, find_file, read_lines, read_text, split_documents
from prunelab.data.sources.hf import HfDatasetSource
from prunelab.data.sources.synthetic import SyntheticLanguagePair, draw_sentences
from prunelab.data.tokenizer import PieceTokenizer, Tokenizer, WordTokenizer
from prunelab.data.windows import Window, collate_lm, scored_targets, text_stream, token_stream, windows
from prunelab.errors import UserError
from prunelab.hf.tokenizer import PretrainedTokenizer

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
PERPLEXITY = "exp(mean NLL over all predicted tokens)"
JOINED = "joined"  # data.documents: the split's text tokenized whole (the literature's protocol)
DOCUMENT_MODES = ("blank_lines", "lines", "file", JOINED)
STREAMS = {  # the two ways a split's text becomes its token stream (see the module doc), as results.json names them
    "joined": "the split's whole text tokenized in one call: tokenizer(text)['input_ids'] with the checkpoint's own "
    "special tokens, no separator inserted (SparseGPT/Wanda: tokenizer('\\n\\n'.join(rows))); without a checkpoint "
    "[BOS if data.bos] + encode(text)",
    "eos": "every document's ids (no special tokens) followed by EOS, concatenated ([BOS] first if data.bos)",
}


class PretrainedLmTokenizer(PretrainedTokenizer):
    """A causal language model's own tokenizer (GPT-2, OPT, Llama, ...), read from its folder with AutoTokenizer: its
    EOS separates documents; its pad id is its pad token's, else its EOS id (GPT-2 and Llama have no pad token); its
    BOS id its BOS token's, else its EOS id. Reading, encoding, decoding and `.hf` are PretrainedTokenizer's."""

    def __init__(self, path: str | Path):  # not PretrainedTokenizer's ids: that one asks for a pad token, uses [SEP]
        folder = self._load(path)
        hf = self.hf
        if hf.eos_token_id is None:
            raise UserError(
                f"the tokenizer in {folder} has no end-of-sequence token: language-modeling documents are separated "
                "by it"
            )
        self.eos_id = int(hf.eos_token_id)
        self.pad_id = int(hf.pad_token_id) if hf.pad_token_id is not None else self.eos_id
        self.bos_id = int(hf.bos_token_id) if hf.bos_token_id is not None else self.eos_id
        self.types = False


# --- the data module of this kind ------------------------------------------------------------------------------------
class LanguageModelingDataModule(DataModule):
    """Documents -> per-split token streams -> windows (see the module doc). A source says where the documents come
    from (`read_documents`, `describe_documents`) and how text is cut into tokens without a pretrained checkpoint
    (`build_tokenizer`, `describe_tokenizer`). `seq_len`: tokens a window; `stride`: null (non-overlapping evaluation
    windows) or the strided protocol's step; `bos`: the stream starts with the BOS id."""

    kind = "language_modeling"  # the task kind it feeds (conf/task/language_modeling.yaml)
    pretrained_tokenizer = PretrainedLmTokenizer

    def __init__(
        self,
        seq_len: int = 512,
        stride: int | None = None,
        bos: bool = False,
        max_tokens: int = 8192,
        eval_max_tokens: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(max_tokens=max_tokens, eval_max_tokens=eval_max_tokens, **kwargs)
        if not isinstance(seq_len, int) or seq_len < 2:
            raise UserError(
                f"data.seq_len must be an integer >= 2 (a window predicts its tokens after the first), got {seq_len}"
            )
        if stride is not None and (not isinstance(stride, int) or not 1 <= stride < seq_len):
            hint = " (stride = seq_len is the non-overlapping protocol: data.stride=null)" if stride == seq_len else ""
            raise UserError(f"data.stride must be null or in [1, data.seq_len={seq_len}), got {stride}{hint}")
        if max_tokens < 1 or (eval_max_tokens is not None and eval_max_tokens < 1):
            raise UserError(
                f"data.max_tokens and data.eval_max_tokens must be >= 1, got {max_tokens}, {eval_max_tokens}"
            )
        self.seq_len, self.stride, self.bos = seq_len, stride, bool(bos)
        self.examples: dict[str, list[Window]] = {}
        self.split_stats: dict[str, dict[str, Any]] = {}

    # --- what a data source provides -------------------------------------------------------------
    @abstractmethod
    def read_documents(self, split: str) -> list[str]:
        """The documents of one split, in order."""

    @abstractmethod
    def describe_documents(self) -> str:
        """Where the documents come from and how they are cut (for the protocol)."""

    def describe_tokenizer(self) -> dict[str, Any]:
        """The data's own tokenizer, for the protocol."""
        return {"kind": type(self.tokenizer).__name__}

    def joined_text(self, split: str) -> str | None:
        """The split's whole text when its stream is `joined` (tokenized in one call), else None (`eos`: documents)."""
        return None

    @property
    def stream_mode(self) -> str:
        """Which protocol of `STREAMS` makes the splits' streams."""
        return "eos"

    def split_source(self, split: str) -> str:
        """Where a split comes from, for errors."""
        return f"the {split} split"

    # --- shared machinery ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        tok = self.tokenizer
        if tok.max_positions is not None and self.seq_len - 1 > tok.max_positions:
            raise UserError(
                f"data.seq_len={self.seq_len} feeds {self.seq_len - 1} tokens a window, more than the "
                f"{tok.max_positions} positions of the tokenizer's model: set data.seq_len<={tok.max_positions + 1}"
            )
        if self.stream_mode == JOINED and self.bos and getattr(tok, "hf", None) is not None:
            raise UserError(
                "data.bos=true: a joined stream is tokenizer(text), which already puts the checkpoint's BOS first "
                "where its tokenizer does (Llama, OPT); set data.bos=false"
            )
        splits: dict[str, list[Window]] = {}
        stats: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            text = self.joined_text(split)
            if text is None:
                stream, documents = token_stream(tok, self.read_documents(split), self.bos)
            else:
                stream, documents = text_stream(tok, text, self.bos), int(bool(text.strip()))
            where = self.split_source(split)
            if documents == 0:
                raise UserError(f"{where} has no text")
            if len(stream) < self.seq_len:
                raise UserError(
                    f"{where} has {len(stream)} tokens, fewer than one window of data.seq_len={self.seq_len}: "
                    "lower data.seq_len or give it more text"
                )
            stride = None if split == "train" else self.stride  # training: non-overlapping windows
            ws = windows(stream, self.seq_len, stride)
            covered = ws[-1].start + len(ws[-1].ids)
            stats[split] = {
                "documents": documents,
                "tokens": len(stream),
                "windows": len(ws),
                "stride": stride,
                "predicted_tokens": sum(scored_targets(w) for w in ws),
                "dropped_tokens": len(stream) - covered,
            }
            if stats[split]["dropped_tokens"]:
                log.info(
                    "%s: the last %d of %d tokens do not fill a window of %d and are not used",
                    split,
                    stats[split]["dropped_tokens"],
                    len(stream),
                    self.seq_len,
                )
            splits[split] = ws
        self.examples, self.split_stats = splits, stats
        self.release_text()

    def protocol(self) -> dict[str, Any]:
        """How the splits' streams and windows were made, and how perplexity is computed (JSON-able)."""
        tok = self.tokenizer
        info = (
            {"kind": "pretrained", "name": str(tok.folder), "class": type(tok.hf).__name__}  # type: ignore[attr-defined]
            if isinstance(tok, PretrainedLmTokenizer)
            else self.describe_tokenizer()
        )
        joined = self.stream_mode == JOINED
        hf = getattr(tok, "hf", None)
        # what starts the stream: in a joined stream from a checkpoint, what its tokenizer adds to a text (Llama: BOS)
        first = [int(i) for i in hf("")["input_ids"]] if joined and hf is not None else [tok.bos_id] * self.bos
        return {
            "metric": "perplexity",
            "perplexity": PERPLEXITY,
            "stream": self.stream_mode,
            "stream_definition": STREAMS[self.stream_mode],
            "seq_len": self.seq_len,
            "stride": self.stride,
            "eval_windows": "non-overlapping" if self.stride is None else "strided",
            "train_windows": "non-overlapping",
            "targets_per_window": "seq_len - 1" if self.stride is None else "tokens after the previous window's end",
            "documents": self.describe_documents(),
            "document_separator": None
            if joined
            else {"token": "eos", "id": int(tok.eos_id), "where": "after every document"},
            "bos_first": {"id": int(first[0])} if first[:1] == [tok.bos_id] else None,
            "pad_id": int(tok.pad_id),
            "tokenizer": {**info, "vocab_size": int(tok.vocab_size)},
            "splits": {s: dict(v) for s, v in self.split_stats.items()},
        }

    def task_kwargs(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "protocol": self.protocol()}

    def model_kwargs(self) -> dict[str, Any]:
        # vocab_size and pad_id come from the tokenizer (training.build.model_args); a window feeds seq_len-1 tokens
        return {}

    def check_model_positions(self, max_positions: int) -> None:
        if self.seq_len - 1 > max_positions:
            raise UserError(
                f"data.seq_len={self.seq_len} feeds {self.seq_len - 1} tokens a window, more than the model's "
                f"max_len={max_positions} positions: set data.seq_len<={max_positions + 1} (or model.max_len)"
            )

    def encode_texts(self, lines: Sequence[str], where: str) -> list[Window]:
        """Calibration text from outside the run's splits: each line a document, their stream cut into non-overlapping
        windows of seq_len tokens; `where` names their origin in errors."""
        stream, _ = token_stream(self.tokenizer, [line for line in lines if line.strip()], self.bos)
        if len(stream) < self.seq_len:
            raise UserError(
                f"{where}: {len(stream)} tokens, fewer than one window of data.seq_len={self.seq_len}: give more text"
            )
        return windows(stream, self.seq_len)

    def example_length(self, example: Window) -> int:
        return len(example.ids)  # a batch of max_tokens holds max_tokens // seq_len windows

    def collate_fn(self) -> partial:
        return partial(collate_lm, pad_id=self.tokenizer.pad_id)


# --- data=lm_text ----------------------------------------------------------------------------------------------------
class LmTextDataModule(TextFiles, LanguageModelingDataModule):
    """`data=lm_text`: `{dir}/train.txt`, `valid.txt`, `test.txt` (or `.gz`); `documents`: blank_lines, lines or file
    (the `eos` stream: documents, EOS after each), or joined (the literature's: each file's text as stored tokenized
    in one call, `tokenizer(text)`); the checkpoint's tokenizer (`data.tokenizer`), else SentencePiece trained on
    train.txt, cached next to the data."""

    def __init__(
        self,
        train_file: str = "train.txt",
        valid_file: str = "valid.txt",
        test_file: str = "test.txt",
        documents: str = "blank_lines",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if documents not in DOCUMENT_MODES:
            raise UserError(f"data.documents must be one of {', '.join(DOCUMENT_MODES)}, got {documents!r}")
        self.documents = documents
        self._lines: dict[str, list[str]] = {}  # the training text read to train SentencePiece, kept for setup()
        self.check_spm_settings()  # also: the data dir exists
        names = {"train": train_file, "valid": valid_file, "test": test_file}
        self.files = {split: self._find(split, name) for split, name in names.items()}

    def _find(self, split: str, name: str) -> Path:
        plain = self.data_dir / name
        if (found := find_file(plain)) is None:
            raise UserError(f"{split} file not found: {plain} (nor {plain.name}.gz); set data.{split}_file=...")
        return found

    def _read(self, split: str) -> list[str]:
        if split in self._lines:
            return self._lines[split]
        return read_lines(self.files[split], self.utf8_errors)

    def read_documents(self, split: str) -> list[str]:
        return split_documents(self._read(split), self.documents)

    @property
    def stream_mode(self) -> str:
        return JOINED if self.documents == JOINED else "eos"

    def joined_text(self, split: str) -> str | None:
        return read_text(self.files[split], self.utf8_errors) if self.documents == JOINED else None

    def split_source(self, split: str) -> str:
        return f"the {split} split ({self.files[split]})"

    def describe_documents(self) -> str:
        how = {
            "blank_lines": "documents separated by blank lines, a document's lines joined with '\\n'",
            "lines": "every non-empty line a document",
            "file": "each file one document, its lines joined with '\\n'",
            JOINED: "each file's text as stored, tokenized whole",
        }[self.documents]
        return f"{self.data_dir}: {', '.join(p.name for p in self.files.values())}; {how}"

    def release_text(self) -> None:
        self._lines.clear()

    # --- SentencePieceData ---------------------------------------------------------------------------------------
    def _spm_sources(self) -> list[Path]:
        return [self.files["train"]]

    def _spm_sentences(self) -> list[str]:
        lines = self._read("train")
        self._lines["train"] = lines
        return [line for line in lines if line]


# --- data=hf_lm ------------------------------------------------------------------------------------------------------
class HfLmDataModule(HfDatasetSource, LanguageModelingDataModule):
    """`data=hf_lm`: a text column of a `datasets` data set (a save_to_disk folder, or a name found offline, as
    data=hf_classification reads them). `join`: a string, every row of a split joined with it and the text tokenized
    whole (the `joined` stream; the default "\\n\\n": SparseGPT/Wanda's wikitext-2 evaluation,
    `tokenizer("\\n\\n".join(test["text"]))`); null, every row with text its own document (the `eos` stream)."""

    def __init__(self, column: str | None = None, join: str | None = "\n\n", **kwargs: Any):
        super().__init__(**kwargs)
        self.column, self.join = column, join
        self._rows: dict[str, list[str]] = {}

    def text_column(self, ds: Any) -> str:
        have = list(ds.column_names)
        if self.column is not None:
            self.check_columns(ds, [self.column])
            return self.column
        if "text" in have:
            return "text"
        strings = [c for c in have if getattr(ds.features.get(c), "dtype", None) in ("string", "large_string")]
        if len(strings) == 1:
            return strings[0]
        raise UserError(f"data set {self.name!r}: which column holds the text? set data.column=... ({', '.join(have)})")

    def rows(self, split: str) -> list[str]:
        if split not in self._rows:
            ds = self.splits()[split]
            self._rows[split] = ["" if x is None else str(x) for x in ds[self.text_column(ds)]]
        return self._rows[split]

    def read_documents(self, split: str) -> list[str]:
        rows = self.rows(split)
        if self.join is None:
            return [r for r in rows if r.strip()]
        text = self.join.join(rows)
        return [text] if text.strip() else []

    @property
    def stream_mode(self) -> str:
        return "eos" if self.join is None else JOINED

    def joined_text(self, split: str) -> str | None:
        return None if self.join is None else self.join.join(self.rows(split))

    def split_source(self, split: str) -> str:
        return f"split {self.split_names[split]!r} of data set {self.name!r}"

    def describe_documents(self) -> str:
        where = f"data set {self.name!r}" + (f" ({self.config})" if self.config else "")
        column = self.column or "text (guessed)"
        if self.join is None:
            return f"{where}, column {column}: every row with text a document"
        return f"{where}, column {column}: all rows of a split joined with {self.join!r}, tokenized whole"

    def release_text(self) -> None:
        self._rows.clear()

    def _spm_sentences(self) -> list[str]:
        # lines, not rows: SentencePiece skips sentences longer than its max_sentence_length (4192 bytes)
        return [line.strip() for row in self.rows("train") for line in row.split("\n") if line.strip()]


# --- data=synthetic_lm -----------------------------------------------------------------------------------------------
SENTENCE_END = "."


class SyntheticLmDataModule(LanguageModelingDataModule):
    """`data=synthetic_lm`: the embedded synthetic language (the source side of data=synthetic_translation's pair:
    SVO, agreement of the verb with its subject, prepositional phrases), generated from `seed`. A sentence ends in
    "."; a document is `sentences_per_document` consecutive sentences. Valid and test sentences never occur in
    training. `tokenization`: syllable (words cut into their syllables, BPE-style) or word (one token per word form)."""

    def __init__(
        self,
        train_sentences: int = 4000,
        valid_sentences: int = 400,
        test_sentences: int = 400,
        sentences_per_document: int = 8,
        tokenization: str = "syllable",
        n_nouns: int = 160,
        n_adjectives: int = 60,
        n_verbs: int = 60,
        n_preps: int = 8,
        max_adjectives: int = 2,
        p_pp: float = 0.3,
        p_conj: float = 0.15,
        **kwargs: Any,
    ):
        kwargs.setdefault("seq_len", 64)
        super().__init__(**kwargs)
        if tokenization not in ("syllable", "word"):
            raise UserError(f"data.tokenization must be syllable or word, got {tokenization!r}")
        sizes = {"train": train_sentences, "valid": valid_sentences, "test": test_sentences}
        if bad := [f"data.{k}_sentences={v}" for k, v in sizes.items() if v < 1]:
            raise UserError(f"{', '.join(bad)}: every split needs at least one sentence")
        if sentences_per_document < 1:
            raise UserError(f"data.sentences_per_document must be >= 1, got {sentences_per_document}")
        self.sizes, self.sentences_per_document, self.tokenization = sizes, sentences_per_document, tokenization
        self.lang = SyntheticLanguagePair(
            self.seed, n_nouns, n_adjectives, n_verbs, n_preps, max_adjectives, p_pp, p_conj
        )

    @cached_property
    def sentences(self) -> dict[str, list[str]]:
        """Each split's sentences (ending in " ."), drawn from one stream: test, valid, then train without theirs."""
        drawn = draw_sentences(self.lang, random.Random(f"{self.seed}-lm-sentences"), self.sizes)
        return {split: [f"{s} {SENTENCE_END}" for s, _ in pairs] for split, pairs in drawn.items()}

    def build_tokenizer(self) -> Tokenizer:
        seg = {**self.lang.source_segmentation(), SENTENCE_END: [SENTENCE_END]}
        return WordTokenizer(seg) if self.tokenization == "word" else PieceTokenizer(seg)

    def read_documents(self, split: str) -> list[str]:
        sents, k = self.sentences[split], self.sentences_per_document
        return [" ".join(sents[i : i + k]) for i in range(0, len(sents), k)]

    def describe_documents(self) -> str:
        sizes = ", ".join(f"{split} {n}" for split, n in self.sizes.items())
        return f"synthetic (seed {self.seed}), sentences: {sizes}; {self.sentences_per_document} consecutive a document"

    def describe_tokenizer(self) -> dict[str, Any]:
        return {"kind": f"synthetic {self.tokenization}", "name": type(self.tokenizer).__name__}
