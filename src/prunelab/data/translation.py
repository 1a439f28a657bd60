"""The LightningDataModule every translation data source shares.

A subclass says where the text comes from (`read_split`) and how it is cut into tokens
(`build_tokenizer`); this class encodes, filters the training set by length, and batches by tokens. With
`tokenizer=` a pretrained checkpoint's folder (by default the model's own `model.path`), that checkpoint's tokenizer
and special ids are used instead (Marian: sources end in its </s>, the decoder starts from its pad id).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning as L

from prunelab.data.batching import Example, TokenBatchedLoaders, collate, sample_validation
from prunelab.data.tokenizer import Tokenizer
from prunelab.errors import UserError
from prunelab.hf.checkpoint import PretrainedTokenizer

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


class TranslationDataModule(TokenBatchedLoaders, L.LightningDataModule, ABC):
    kind = "translation"  # the task kind it feeds (conf/task/translation.yaml)

    def __init__(
        self,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_len: int = 256,
        eval_max_len: int = 1000,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int | None = None,
        tokenizer: str | None = None,
        valid_max_sentences: int | None = None,
    ):
        super().__init__()
        self.valid_max_sentences = valid_max_sentences  # validate on a fixed sample of this size (None: all)
        self.pretrained = tokenizer  # a checkpoint folder whose tokenizer replaces the data's own
        self.max_tokens = max_tokens
        self.eval_max_tokens = eval_max_tokens or max_tokens
        self.max_len = max_len
        self.eval_max_len = eval_max_len
        self.num_workers = num_workers
        self.seed = seed  # the data's own (what a synthetic task generates)
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed  # training order: the run's seed
        self._tokenizer: Tokenizer | None = None
        self.examples: dict[str, list[Example]] = {}

    # --- what a data source provides -------------------------------------------------------------
    @abstractmethod
    def build_tokenizer(self) -> Tokenizer: ...

    @abstractmethod
    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        """Raw (source lines, target lines) of one split, aligned."""

    # --- shared machinery ------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = PretrainedTokenizer(self.pretrained) if self.pretrained else self.build_tokenizer()
        return self._tokenizer

    def task_kwargs(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        tok = self.tokenizer
        # a pretrained model has positions for so many tokens (512 for OPUS-MT): longer inputs are cut to fit
        limit = tok.max_positions or 1 << 30
        max_len, eval_max_len = min(self.max_len, limit), min(self.eval_max_len, limit)
        splits: dict[str, list[Example]] = {}  # assigned only when every split has been read
        for split in SPLITS:
            src_lines, tgt_lines = self.read_split(split)
            examples: list[Example] = []
            empty = too_long = truncated = 0
            for i, (s, t) in enumerate(zip(src_lines, tgt_lines, strict=True)):
                s_ids, t_ids = tok.encode(s), tok.encode_target(t)
                if split == "train":
                    # as fairseq and Marian do: training pairs need text on both sides and fit the length limit
                    if not s_ids or not t_ids:
                        empty += 1
                        continue
                    if max(len(s_ids), len(t_ids)) + 1 > max_len:
                        too_long += 1
                        continue
                elif max(len(s_ids), len(t_ids)) + 1 > eval_max_len:  # evaluation keeps every sentence
                    # (the raw reference stays whole for BLEU; only the ids fed to the model are cut)
                    s_ids, t_ids = s_ids[: eval_max_len - 1], t_ids[: eval_max_len - 1]
                    truncated += 1
                examples.append(([*s_ids, tok.eos_id], t_ids, t, i))
            if empty or too_long:
                log.warning(
                    "%s: dropped %d of %d sentence pairs: %d with an empty side, %d longer than data.max_len=%d tokens",
                    split,
                    empty + too_long,
                    len(src_lines),
                    empty,
                    too_long,
                    max_len,
                )
            if truncated:
                log.warning("%s: truncated %d pairs to %d tokens", split, truncated, eval_max_len)
            if not examples:
                raise UserError(f"the {split} split has no usable sentence pairs")
            splits[split] = examples
        splits["valid"] = sample_validation(splits["valid"], self.valid_max_sentences, self.seed)
        self.examples = splits

    def encode_texts(self, lines: Sequence[str], where: str) -> list[Example]:
        """Examples from raw `source<TAB>target` lines (calibration text from outside the run's splits), encoded as
        evaluation pairs are; `where` names their origin in errors."""
        tok = self.tokenizer
        limit = min(self.eval_max_len, tok.max_positions or 1 << 30)
        examples: list[Example] = []
        for i, line in enumerate(lines):
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise UserError(
                    f"{where}, example {i + 1}: a translation calibration example is source<TAB>target "
                    f"(the decoder needs its target), found {len(parts)} tab-separated field(s)"
                )
            s_ids, t_ids = tok.encode(parts[0].strip())[: limit - 1], tok.encode_target(parts[1].strip())[: limit - 1]
            examples.append(([*s_ids, tok.eos_id], t_ids, parts[1].strip(), i))
        return examples

    def example_length(self, example: Example) -> int:
        return max(len(example[0]), len(example[1]) + 1)

    def collate_fn(self) -> partial:
        tok = self.tokenizer
        return partial(collate, pad_id=tok.pad_id, bos_id=tok.bos_id, eos_id=tok.eos_id)

    def references(self, split: str) -> list[str]:
        return [e[2] for e in self.examples[split]]
