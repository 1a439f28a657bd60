"""Translation data (`task=translation`, floor: data): the data module of this kind and every source of it.

`TranslationDataModule` encodes (source, target) pairs, filters the training set by length, and batches by tokens;
a source says where the text comes from (`read_split`) and how it is cut into tokens (`build_tokenizer`). With
`tokenizer=` a pretrained checkpoint's folder (by default the model's own `model.path`), that checkpoint's tokenizer,
special ids and framing are used instead (Marian: sources end in its </s>, the decoder starts from its pad id;
mBART-50, M2M100, NLLB: [src code] X </s> -> [tgt code] Y </s>, the codes from `src_code` / `tgt_code` or the
languages).

    data=synthetic_translation   SyntheticTranslationDataModule: the embedded language pair, generated from a seed
    data=parallel_text           ParallelTextDataModule: `{dir}/{prefix}.{lang}` files, joint SentencePiece
    data=hf_translation          HfTranslationDataModule: a parallel corpus through `datasets`
"""

from __future__ import annotations

import itertools
import logging
import random
from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from prunelab.data.base import DataModule
from prunelab.data.batching import Example, collate, sample_validation
from prunelab.data.sources.files import TextFiles, find_file, read_lines
from prunelab.data.sources.hf import HfDatasetSource
from prunelab.data.sources.synthetic import (
    REGIMES,
    SyntheticLanguagePair,
    check_fraction,
    corrupt_targets,
    draw_sentences,
    regime_defaults,
)
from prunelab.data.tokenizer import PieceTokenizer, Tokenizer, WordTokenizer
from prunelab.errors import UserError
from prunelab.hf.tokenizer import PretrainedTokenizer

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")


class TranslationDataModule(DataModule):
    """Pairs of one language's sentences and their translations. `max_len`: training pairs with more subwords on
    either side are dropped; `eval_max_len`: longer evaluation pairs are truncated; `valid_max_sentences`: validate on
    a fixed random sample of so many pairs (None: all). `src_code` / `tgt_code`: a multilingual checkpoint's language
    codes (mBART-50 en_XX, M2M100 __en__, NLLB eng_Latn); None: derived from `src_lang` / `tgt_lang` (the code
    itself, or the one code of that language: en -> en_XX), see prunelab.hf.languages."""

    kind = "translation"  # the task kind it feeds (conf/task/translation.yaml)
    src_lang: str | None = None  # the sources' languages, where the data names them
    tgt_lang: str | None = None

    def __init__(
        self,
        max_len: int = 256,
        eval_max_len: int = 1000,
        valid_max_sentences: int | None = None,
        src_code: str | None = None,
        tgt_code: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.src_code, self.tgt_code = src_code, tgt_code
        self.valid_max_sentences = valid_max_sentences  # validate on a fixed sample of this size (None: all)
        self.max_len = max_len
        self.eval_max_len = eval_max_len
        self.examples: dict[str, list[Example]] = {}

    # --- what a data source provides -------------------------------------------------------------
    @abstractmethod
    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        """Raw (source lines, target lines) of one split, aligned."""

    # --- shared machinery ------------------------------------------------------------------------
    def pretrained_tokenizer(self, path: str) -> Tokenizer:
        """The checkpoint's tokenizer framing this data's languages (a multilingual one: their codes)."""
        return PretrainedTokenizer(
            path, src_lang=self.src_lang, tgt_lang=self.tgt_lang, src_code=self.src_code, tgt_code=self.tgt_code
        )

    def task_kwargs(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}

    def setup(self, stage: str | None = None) -> None:
        if not self.examples:
            self.examples = self._encode_splits()
        self.release_text()  # the examples hold what is needed; drop the raw text

    def _encode_splits(self) -> dict[str, list[Example]]:
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
        return splits

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


# --- data=synthetic_translation --------------------------------------------------------------------------------------
class SyntheticTranslationDataModule(TranslationDataModule):
    """`data=synthetic_translation`: the embedded default, needs no files and no network.

    `regime`: `clean` (the default: 40k pairs from a few hundred lemmas, no ambiguity, no noise) or `real`
    (`data=synthetic_translation_real`: 10k pairs from thousands of Zipf-distributed lemmas, 15% of them ambiguous,
    4% noisy training pairs). The size, lexicon, `noise` and `ambiguity` arguments left None take the regime's value
    (REGIMES); given, they override it. Under `real`, `tokenization=word` takes its vocabulary from the training
    pairs (unseen words are unknown), as a pipeline on a real corpus would; syllable pieces cover every word, as BPE
    does. `noise`: the fraction of training pairs whose target is corrupted (its words shuffled, or another pair's
    target); valid and test are never noisy."""

    def __init__(
        self,
        train_size: int | None = None,
        valid_size: int = 300,
        test_size: int = 500,
        n_nouns: int | None = None,
        n_adjectives: int | None = None,
        n_verbs: int | None = None,
        n_preps: int | None = None,
        max_adjectives: int = 2,
        p_pp: float = 0.3,
        p_conj: float = 0.15,
        tokenization: str = "syllable",
        regime: str = "clean",
        noise: float | None = None,
        ambiguity: float | None = None,
        ambiguity_context: float = 0.5,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if tokenization not in ("syllable", "word"):
            raise UserError(f"data.tokenization must be syllable or word, got {tokenization!r}")
        given = {
            "train_size": train_size,
            "n_nouns": n_nouns,
            "n_adjectives": n_adjectives,
            "n_verbs": n_verbs,
            "n_preps": n_preps,
            "noise": noise,
            "ambiguity": ambiguity,
        }
        v = regime_defaults(REGIMES, regime, given)
        check_fraction("noise", v["noise"], 0.5)
        check_fraction("ambiguity", v["ambiguity"])
        check_fraction("ambiguity_context", ambiguity_context)
        self.regime = regime
        self.tokenization = tokenization
        self.noise = float(v["noise"])
        self.sizes = {"train": v["train_size"], "valid": valid_size, "test": test_size}
        self.lang = SyntheticLanguagePair(
            self.seed,
            v["n_nouns"],
            v["n_adjectives"],
            v["n_verbs"],
            v["n_preps"],
            max_adjectives,
            p_pp,
            p_conj,
            v["ambiguity"],
            ambiguity_context,
        )
        self.noisy: list[int] = []  # the indices of the corrupted training pairs

    @cached_property
    def corpus(self) -> dict[str, tuple[list[str], list[str]]]:
        """Splits drawn from one stream; valid/test sentences never occur in train."""
        drawn = draw_sentences(self.lang, random.Random(f"{self.seed}-sentences"), self.sizes)
        out = {split: ([s for s, _ in pairs], [t for _, t in pairs]) for split, pairs in drawn.items()}
        if self.noise > 0:  # the noisy targets from their own stream: the sentences stay the noise-free corpus's
            targets, self.noisy = corrupt_targets(out["train"][1], self.noise, random.Random(f"{self.seed}-noise"))
            out["train"] = (out["train"][0], targets)
        return out

    def build_tokenizer(self) -> Tokenizer:
        if self.tokenization == "word":
            if self.regime == "real":  # as on a real corpus: the words of the training pairs, others unknown
                src, tgt = self.corpus["train"]
                return WordTokenizer({w for line in (*src, *tgt) for w in line.split()})
            return WordTokenizer(self.lang.vocabulary())
        return PieceTokenizer(self.lang.segmentation())

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        return self.corpus[split]


# --- data=parallel_text ----------------------------------------------------------------------------------------------
class ParallelTextDataModule(TextFiles, TranslationDataModule):
    """`data=parallel_text`: a sentence-aligned corpus on disk, cut into joint SentencePiece subwords. The layout is
    the raw one of Multi30k, IWSLT and WMT dumps: `{dir}/{prefix}.{lang}`, one sentence per line, line i of the
    source file translating line i of the target file; `{prefix}.{lang}.gz` is read as well when the plain file is
    absent. One SentencePiece model is trained on the training text of both sides and cached next to the data under a
    name derived from that text and the SentencePiece settings."""

    def __init__(
        self,
        src_lang: str,
        tgt_lang: str,
        train_prefix: str = "train",
        valid_prefix: str = "valid",
        test_prefix: str = "test",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.prefixes = {"train": train_prefix, "valid": valid_prefix, "test": test_prefix}
        self._lines: dict[str, tuple[list[str], list[str]]] = {}  # splits read early, kept for setup()

        self.check_spm_settings()
        self.files = {split: self._split_files(split) for split in self.prefixes}

    # --- files ------------------------------------------------------------------------------------------
    def _split_files(self, split: str) -> tuple[Path, Path]:
        paths = []
        for lang in (self.src_lang, self.tgt_lang):
            plain = self.data_dir / f"{self.prefixes[split]}.{lang}"
            if (found := find_file(plain)) is None:
                raise UserError(
                    f"{split} file not found: {plain} (nor {plain.name}.gz); if the {split} split has another name, "
                    f"set data.{split}_prefix=..., e.g. data.valid_prefix=dev"
                )
            paths.append(found)
        return paths[0], paths[1]

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if split in self._lines:  # read already to train SentencePiece; hand it over without a copy
            return self._lines.pop(split)
        src_path, tgt_path = self.files[split]
        src, tgt = read_lines(src_path, self.utf8_errors), read_lines(tgt_path, self.utf8_errors)
        if split == "train":
            for path, lines in ((src_path, src), (tgt_path, tgt)):
                if not any(lines):
                    raise UserError(f"training file {path} is empty")
        if len(src) != len(tgt):
            raise UserError(
                f"the {split} split is not aligned: {src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}"
            )
        return src, tgt

    # --- subwords (SentencePieceData) -------------------------------------------------------------------
    def _spm_sources(self) -> list[Path]:
        return list(self.files["train"])

    def _spm_sentences(self) -> list[str]:
        # read (and check) the training split once; setup() reuses these lines
        src, tgt = self.read_split("train")
        self._lines["train"] = (src, tgt)
        return [line for line in itertools.chain(src, tgt) if line]

    def release_text(self) -> None:
        self._lines.clear()


# --- data=hf_translation ---------------------------------------------------------------------------------------------
class HfTranslationDataModule(HfDatasetSource, TranslationDataModule):
    """`data=hf_translation`: a parallel corpus through `datasets` (see `prunelab.data.sources.hf`): pairs from a
    `translation` column of {lang: text} dicts (the `datasets` convention) or from `src_column` and `tgt_column`."""

    def __init__(
        self,
        src_lang: str,
        tgt_lang: str,
        src_column: str | None = None,
        tgt_column: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        if (src_column is None) != (tgt_column is None):
            raise UserError("set both data.src_column and data.tgt_column, or neither (a `translation` column)")
        self.src_column, self.tgt_column = src_column, tgt_column
        self._lines: dict[str, tuple[list[str], list[str]]] = {}

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if split in self._lines:
            return self._lines[split]
        ds = self.splits()[split]
        if self.src_column is not None:
            self.check_columns(ds, [self.src_column, self.tgt_column])
            src, tgt = ds[self.src_column], ds[self.tgt_column]
        elif "translation" in ds.column_names:
            pairs = ds["translation"]
            langs = set(pairs[0]) if pairs else set()
            for lang in (self.src_lang, self.tgt_lang):
                if lang not in langs:
                    raise UserError(
                        f"data set {self.name!r}: its translation pairs have no {lang!r} side (they have "
                        f"{', '.join(sorted(langs))}); set data.src_lang / data.tgt_lang"
                    )
            src, tgt = [p[self.src_lang] for p in pairs], [p[self.tgt_lang] for p in pairs]
        else:
            raise UserError(
                f"data set {self.name!r} has no `translation` column (it has {', '.join(ds.column_names)}): "
                "set data.src_column and data.tgt_column"
            )
        out = ([str(s).strip() for s in src], [str(t).strip() for t in tgt])
        self._lines[split] = out
        return out

    def _spm_sentences(self) -> list[str]:
        src, tgt = self.read_split("train")
        return [line for line in (*src, *tgt) if line]

    def release_text(self) -> None:
        self._lines.clear()
