"""Data sets through Hugging Face `datasets`, where researchers keep them: `data=hf_classification` (GLUE and the like)
and `data=hf_translation` (WMT, IWSLT, OPUS as `datasets` has them), alongside the file readers.

`data.name` is read, in this order, as
- a folder written by `DatasetDict.save_to_disk` (it has dataset_dict.json): `datasets.load_from_disk`;
- anything else `datasets.load_dataset(name, config, data_files=...)` reads: a hub id found in the local cache
  (`glue` with `data.config=sst2`; nothing is downloaded when the machine is offline), a folder of csv/json/parquet
  files, or a builder name such as `csv`/`json` with `data.data_files`.

Splits are named by `data.train_split`, `data.valid_split`, `data.test_split` (GLUE hides its test labels, so its
preset tests on `validation`; a split without labels is one clear error). Texts come from `data.text_columns` (one
column, or two for sentence pairs such as MNLI's premise/hypothesis; null: the usual names are tried), labels from
`data.label_column`: a ClassLabel's id k is class k (its names are the label names; a pretrained classifier whose
config names its rows LABEL_k predicts id k on row k, one that names them as the data does is followed), plain
integers are classes in numeric order, and numbers that are not whole (STS-B's scores) are refused: regression is
not supported. Translation pairs come from a `translation`
column of {lang: text} dicts (the `datasets` convention) or from `data.src_column`/`data.tgt_column`.

Without a pretrained model's tokenizer (`data.tokenizer`), a SentencePiece model is trained on the training text as
for the file readers, cached under a key made from that text and the settings."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from prunelab.data.classification import ClassificationDataModule
from prunelab.data.parallel_text import FALLBACK_CACHE_DIR, SentencePieceData
from prunelab.data.translation import TranslationDataModule
from prunelab.errors import UserError

log = logging.getLogger(__name__)
SPLIT_KEYS = {"train": "train_split", "valid": "valid_split", "test": "test_split"}
# Text columns tried in order when data.text_columns is null: single texts, then the pairs of GLUE-style tasks.
TEXT_COLUMNS = (
    ("sentence",),
    ("text",),
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("question", "passage"),
)


def load_splits(name: str, config: str | None, data_files: Any, splits: dict[str, str]) -> dict[str, Any]:
    """{train|valid|test: datasets.Dataset} from what `name` names (see the module doc); one clear error when the
    data set or a split cannot be read."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "data=hf_classification|hf_translation needs the datasets package: pip install -e '.[hf]'"
        ) from None
    folder = Path(name).expanduser()
    try:
        if (folder / "dataset_dict.json").is_file():
            found = datasets.load_from_disk(str(folder))
        else:
            found = datasets.load_dataset(name, config, data_files=data_files)
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ConnectionError, ValueError, ...)
        where = "" if folder.exists() else " (not a local folder; a hub data set must be in the local datasets cache)"
        raise UserError(f"cannot load data set {name!r}{where}: {' '.join(str(e).split())[:300]}") from e
    if not isinstance(found, datasets.DatasetDict):
        raise UserError(
            f"data set {name!r} has no named splits (expected a DatasetDict with {', '.join(splits.values())})"
        )
    out = {}
    for split, wanted in splits.items():
        if wanted not in found:
            raise UserError(
                f"data set {name!r} has no split {wanted!r} (it has {', '.join(found)}); "
                f"set data.{SPLIT_KEYS[split]}=..."
            )
        out[split] = found[wanted]
    if splits["valid"] == splits["test"]:
        log.warning(
            "data.valid_split and data.test_split are both %r: the best checkpoint is chosen on the test data",
            splits["test"],
        )
    return out


def _label_name(y: Any) -> str:
    """A plain label value as a class name: whole floats as integers (1.0 -> "1"), the rest as written."""
    return str(int(y)) if isinstance(y, float) and y.is_integer() else str(y)


def _text_digest(texts: list[str]) -> bytes:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", errors="replace") + b"\0")
    return h.digest()


class HfDatasetSource(SentencePieceData):
    """What both `datasets` readers share: the data set and its three splits, read once (`splits()`), and SentencePiece
    over its training text, cached in `cache_dir`, else the data set's folder (when it is one), else
    ~/.cache/prunelab/spm, under a key made from the text itself and the settings."""

    def _init_source(
        self,
        name: str,
        config: str | None,
        data_files: Any,
        split_names: dict[str, str],
        vocab_size: int,
        spm_model_type: str,
        spm_character_coverage: float,
        spm_max_sentences: int,
        cache_dir: str | None,
    ) -> None:
        self.name, self.config, self.data_files, self.split_names = name, config, data_files, split_names
        self._splits: dict[str, Any] | None = None
        self.vocab_size = vocab_size
        self.spm_model_type = spm_model_type
        self.spm_character_coverage = spm_character_coverage
        self.spm_max_sentences = spm_max_sentences
        self.utf8_errors = "strict"  # the text is already decoded by datasets
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir else None
        folder = Path(name).expanduser()
        self.data_dir = folder.absolute() if folder.is_dir() else FALLBACK_CACHE_DIR.expanduser()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spm_file = None
        self.check_spm_settings()

    def splits(self) -> dict[str, Any]:
        if self._splits is None:
            self._splits = load_splits(self.name, self.config, self.data_files, self.split_names)
        return self._splits

    def _spm_sources(self) -> list[Path]:
        return []  # no files: the text keys the cache (_spm_key_extra)

    def _spm_key_extra(self) -> bytes:
        return _text_digest(self._spm_sentences())


class HfClassificationDataModule(HfDatasetSource, ClassificationDataModule):
    """`data=hf_classification`: a classification data set through `datasets` (see the module doc)."""

    def __init__(
        self,
        name: str,
        config: str | None = None,
        data_files: Any = None,
        train_split: str = "train",
        valid_split: str = "validation",
        test_split: str = "test",
        text_columns: list[str] | None = None,
        label_column: str = "label",
        vocab_size: int = 8000,
        spm_model_type: str = "unigram",
        spm_character_coverage: float = 1.0,
        spm_max_sentences: int = 2_000_000,
        cache_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        splits = {"train": train_split, "valid": valid_split, "test": test_split}
        spm = (vocab_size, spm_model_type, spm_character_coverage, spm_max_sentences, cache_dir)
        self._init_source(name, config, data_files, splits, *spm)
        self.text_columns = list(text_columns) if text_columns else None
        if self.text_columns is not None and len(self.text_columns) not in (1, 2):
            raise UserError(f"data.text_columns must name one column or two (a pair), got {self.text_columns}")
        self.label_column = label_column
        self._read: dict[str, tuple[list[str], list[str]]] = {}

    def columns(self, ds: Any) -> list[str]:
        have = set(ds.column_names)
        if self.text_columns is not None:
            if missing := [c for c in self.text_columns if c not in have]:
                raise UserError(
                    f"data set {self.name!r} has no column {missing[0]!r} (it has {', '.join(ds.column_names)})"
                )
            return self.text_columns
        for names in TEXT_COLUMNS:
            if set(names) <= have:
                return list(names)
        raise UserError(
            f"data set {self.name!r}: which columns hold the text? set data.text_columns=[...] "
            f"(it has {', '.join(ds.column_names)})"
        )

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if split in self._read:
            return self._read[split]
        ds = self.splits()[split]
        columns = self.columns(ds)
        if self.label_column not in ds.column_names:
            raise UserError(
                f"data set {self.name!r} has no label column {self.label_column!r} (it has "
                f"{', '.join(ds.column_names)}); set data.label_column=..."
            )
        names = self.class_names(split)
        raw = ds[self.label_column]
        # GLUE writes -1 for a hidden label (-1.0 in STS-B's float column)
        if unlabelled := sum(1 for y in raw if y is None or (isinstance(y, (int, float)) and y < 0)):
            raise UserError(
                f"the {self.split_names[split]!r} split of {self.name!r} has {unlabelled} examples without a label "
                f"(GLUE hides its test labels): set data.{SPLIT_KEYS[split]}=... to a labelled split, e.g. validation"
            )
        labels = [names[y] if names else _label_name(y) for y in raw]
        parts = [[" ".join(str(t).split("\t")) for t in ds[c]] for c in columns]  # a tab joins a pair's parts
        texts = ["\t".join(p) for p in zip(*parts, strict=True)]
        self._read[split] = (texts, labels)
        return texts, labels

    def class_names(self, split: str) -> list[str] | None:
        """The names of the label column's ClassLabel in `split`, in id order; None for plain values."""
        names = getattr(self.splits()[split].features.get(self.label_column), "names", None)
        return list(names) if names else None

    def declared_labels(self) -> list[str] | None:
        return self.class_names("train")  # a ClassLabel's id k is class k (MRPC: not_equivalent, equivalent)

    def label_source(self) -> str:
        return f"data set {self.name!r}, column {self.label_column!r}"

    def _spm_sentences(self) -> list[str]:
        return self.training_parts()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self._read.clear()


class HfTranslationDataModule(HfDatasetSource, TranslationDataModule):
    """`data=hf_translation`: a parallel corpus through `datasets` (see the module doc)."""

    def __init__(
        self,
        name: str,
        src_lang: str,
        tgt_lang: str,
        config: str | None = None,
        data_files: Any = None,
        train_split: str = "train",
        valid_split: str = "validation",
        test_split: str = "test",
        src_column: str | None = None,
        tgt_column: str | None = None,
        vocab_size: int = 8000,
        spm_model_type: str = "unigram",
        spm_character_coverage: float = 1.0,
        spm_max_sentences: int = 2_000_000,
        cache_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        splits = {"train": train_split, "valid": valid_split, "test": test_split}
        spm = (vocab_size, spm_model_type, spm_character_coverage, spm_max_sentences, cache_dir)
        self._init_source(name, config, data_files, splits, *spm)
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
            for c in (self.src_column, self.tgt_column):
                if c not in ds.column_names:
                    raise UserError(f"data set {self.name!r} has no column {c!r} (it has {', '.join(ds.column_names)})")
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

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self._lines.clear()
