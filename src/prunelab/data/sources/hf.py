"""Data sets through Hugging Face `datasets`, where researchers keep them (floor: data): the mixin of
`data=hf_classification` (GLUE and the like), `data=hf_translation` (WMT, IWSLT, OPUS as `datasets` has them) and
`data=hf_lm` (wikitext, C4), alongside the file readers.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunelab.data.sources.subwords import FALLBACK_CACHE_DIR, SentencePieceData
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


def label_name(y: Any) -> str:
    """A plain label value as a class name: whole floats as integers (1.0 -> "1"), the rest as written."""
    return str(int(y)) if isinstance(y, float) and y.is_integer() else str(y)


def _text_digest(texts: list[str]) -> bytes:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", errors="replace") + b"\0")
    return h.digest()


class HfDatasetSource(SentencePieceData):
    """The mixin of every `datasets` reader: the data set (`name`, `config`, `data_files`) and its three splits
    (`train_split`, `valid_split`, `test_split`), read once (`splits()`), and SentencePiece over its training text,
    cached in `cache_dir`, else the data set's folder (when it is one), else ~/.cache/prunelab/spm, under a key made
    from the text itself and the settings."""

    def __init__(
        self,
        name: str,
        config: str | None = None,
        data_files: Any = None,
        train_split: str = "train",
        valid_split: str = "validation",
        test_split: str = "test",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.name, self.config, self.data_files = name, config, data_files
        self.split_names = {"train": train_split, "valid": valid_split, "test": test_split}
        self._splits: dict[str, Any] | None = None
        self.utf8_errors = "strict"  # the text is already decoded by datasets
        folder = Path(name).expanduser()
        self.data_dir = folder.absolute() if folder.is_dir() else FALLBACK_CACHE_DIR.expanduser()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.check_spm_settings()

    def splits(self) -> dict[str, Any]:
        if self._splits is None:
            self._splits = load_splits(self.name, self.config, self.data_files, self.split_names)
        return self._splits

    def check_columns(self, ds: Any, columns: Sequence[str]) -> None:
        """One clear error naming the first of `columns` that split `ds` does not have."""
        for c in columns:
            if c not in ds.column_names:
                raise UserError(f"data set {self.name!r} has no column {c!r} (it has {', '.join(ds.column_names)})")

    def _spm_sources(self) -> list[Path]:
        return []  # no files: the text keys the cache (_spm_key_extra)

    def _spm_key_extra(self) -> bytes:
        return _text_digest(self._spm_sentences())
