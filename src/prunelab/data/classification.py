"""Text classification data (`task=classification`, floor: data): the data module of this kind and every source
of it.

An example is (ids framed by the tokenizer: [CLS] text EOS, label index, label name, line index, token types or
None). Batches hold up to `max_tokens` tokens, grouped by length, sharded per DDP rank, by the same sampler as
translation. With `tokenizer=` a pretrained checkpoint's folder (the model's own `model.path` by default), its
tokenizer frames the inputs ([CLS] a [SEP] b [SEP] and token types for BERT) instead of prunelab's own.

    data=synthetic_classification   SyntheticClassificationDataModule: the negation-scope task, from a seed
    data=tsv_classification         TsvClassificationDataModule: `{train,dev,test}.tsv` files
    data=hf_classification          HfClassificationDataModule: a data set through `datasets` (GLUE and the like)
"""

from __future__ import annotations

import json
import logging
import random
import re
from abc import abstractmethod
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from prunelab.data.base import DataModule
from prunelab.data.batching import sample_validation
from prunelab.data.sources.files import TextFiles, find_file, read_tsv
from prunelab.data.sources.hf import SPLIT_KEYS, TEXT_COLUMNS, HfDatasetSource, label_name
from prunelab.data.sources.synthetic import CLASSIFICATION_REGIMES, NegationScopeTask, check_fraction, regime_defaults
from prunelab.data.tokenizer import BOS, Tokenizer, WordTokenizer
from prunelab.errors import UserError
from prunelab.hf.checkpoint import resolve_checkpoint

log = logging.getLogger(__name__)
SPLITS = ("train", "valid", "test")
CLS = BOS  # the first token of every input; pooling=cls reads its final state
# (ids with CLS and EOS, label index, label name, index, token types or None)
ClsExample = tuple[list[int], int, str, int, list[int] | None]


def collate_classification(examples: Sequence[ClsExample], pad_id: int) -> dict[str, Any]:
    """-> src (B, S), label (B,), ref (label names, for code that counts sentences), idx (B,), n_tokens, and
    types (B, S) when the tokenizer gives token types (padding gets type 0, as HF pads token_type_ids)."""
    B, S = len(examples), max(len(e[0]) for e in examples)
    src = torch.full((B, S), pad_id, dtype=torch.long)
    for i, e in enumerate(examples):
        src[i, : len(e[0])] = torch.tensor(e[0])
    extra: dict[str, Any] = {}
    if examples[0][4] is not None:
        types = torch.zeros((B, S), dtype=torch.long)
        for i, e in enumerate(examples):
            types[i, : len(e[0])] = torch.tensor(e[4])
        extra["types"] = types
    return {
        **extra,
        "src": src,
        "label": torch.tensor([e[1] for e in examples]),
        "ref": [e[2] for e in examples],
        "idx": torch.tensor([e[3] for e in examples]),
        "n_tokens": sum(len(e[0]) for e in examples),
    }


class ClassificationDataModule(DataModule):
    """Texts (or pairs) and their labels. `max_len`: longer inputs are truncated; `valid_max_sentences`: validate on a
    fixed random sample of so many examples (None: all). `labels` (the class names, index = class id) come from the
    training split and travel with every checkpoint (`state_dict`)."""

    kind = "classification"

    def __init__(self, max_len: int = 256, valid_max_sentences: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.valid_max_sentences = valid_max_sentences  # validate on a fixed sample of this size (None: all)
        self.max_len = max_len
        self.examples: dict[str, list[ClsExample]] = {}
        self.labels: list[str] = []  # label names, index = class id (from the training split)

    # --- what a data source provides -------------------------------------------------------------
    @abstractmethod
    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        """(texts, label names) of one split; a sentence pair is one text, its two parts joined by a tab."""

    # --- shared machinery ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict[str, Any]:
        """What the model builder needs from the data besides the vocabulary."""
        return {"num_classes": self.num_classes}

    def task_kwargs(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def setup(self, stage: str | None = None) -> None:
        if not self.examples:
            self._encode_splits()
        self.release_text()  # the examples hold what is needed; drop the raw text

    def _encode_splits(self) -> None:
        train = self.read_split("train")
        self.refuse_regression(train[1])
        raw = {"train": train, **{split: self.read_split(split) for split in SPLITS[1:]}}
        if (seen := len(set(train[1]))) < 2:
            raise UserError(f"the training split has {seen} label(s); classification needs at least 2")
        declared = self.declared_labels()
        labels = self.checkpoint_order(declared or sorted(set(train[1]), key=_label_order))
        index = {name: i for i, name in enumerate(labels)}
        splits: dict[str, list[ClsExample]] = {}
        for split in SPLITS:
            texts, names = raw[split]
            unknown = [i for i, name in enumerate(names) if name not in index]
            if unknown:
                i = unknown[0]
                more = f" ({len(unknown) - 1} more with labels not seen in training)" if len(unknown) > 1 else ""
                raise UserError(
                    f"{self.location(split, i)}: label {names[i]!r} is not among the training labels "
                    f"({', '.join(labels)}){more}"
                )
            examples, truncated = [], 0
            max_len = min(self.max_len, self.tokenizer.max_positions or self.max_len)
            for i, (text, name) in enumerate(zip(texts, names, strict=True)):
                ids, types, cut = self.tokenizer.classification_input(text.split("\t"), max_len)
                truncated += cut
                examples.append((ids, index[name], name, i, types))
            if truncated:
                log.warning("%s: truncated %d texts to %d tokens", split, truncated, max_len)
            if not examples:
                raise UserError(f"the {split} split has no examples")
            splits[split] = examples
        self.labels = labels
        splits["valid"] = sample_validation(splits["valid"], self.valid_max_sentences, self.seed)
        self.examples = splits

    def encode_texts(self, lines: Sequence[str], where: str) -> list[ClsExample]:
        """Unlabelled examples from raw `text` or `text_a<TAB>text_b` lines (calibration text from outside the run's
        splits), framed as the splits' texts are; their label is class 0 (calibration reads no labels)."""
        max_len = min(self.max_len, self.tokenizer.max_positions or self.max_len)
        examples = []
        for i, line in enumerate(lines):
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) > 2 or not all(parts):
                raise UserError(
                    f"{where}, example {i + 1}: a classification calibration example is text or text_a<TAB>text_b, "
                    f"found {len(parts)} tab-separated field(s)" + ("" if all(parts) else " with an empty one")
                )
            ids, types, _ = self.tokenizer.classification_input(parts, max_len)
            examples.append((ids, 0, "", i, types))
        return examples

    def declared_labels(self) -> list[str] | None:
        """The class names in id order when the data set declares them (a `datasets` ClassLabel): class k is then
        the data set's id k, whether or not the training split has examples of it. None (the default): the classes
        are the training split's labels, integers in numeric order (2 before 10), then the rest alphabetically."""
        return None

    def label_source(self) -> str:
        """Where the labels come from, for error messages."""
        return "the training split's labels"

    def refuse_regression(self, names: list[str]) -> None:
        """One clear error when every training label is a number and some are not whole: scores to regress (STS-B),
        which a classifier would turn into one class per value."""
        values = [_number(name) for name in names]
        if not names or any(v is None for v in values):
            return
        if fraction := next((name for name, v in zip(names, values, strict=True) if not v.is_integer()), None):
            raise UserError(
                f"{self.label_source()}: the labels are numbers that are not whole (e.g. {fraction!r}), scores to "
                "regress (as STS-B's): regression is not supported, only classification"
            )

    def checkpoint_order(self, labels: list[str]) -> list[str]:
        """The class order that the head of the pretrained checkpoint (`tokenizer=`) predicts: row k of its head is
        class k of the data. Its config.json's `id2label` decides:
        - default names `LABEL_k` (most fine-tuned hub models): row k is `labels[k]`, the data's own id k;
        - the data's label names (case aside), in any order: row k is the label the checkpoint names k;
        - other names: `labels` as they are when they are numbers (row k is the k-th in numeric order) or the
          checkpoint has no classification head (a fresh one is made); else one clear error.
        Without a checkpoint, a config.json or an id2label of `len(labels)` rows: `labels` as they are."""
        if not self.pretrained:
            return labels
        path = resolve_checkpoint(self.pretrained) / "config.json"
        config = json.loads(path.read_text()) if path.is_file() else {}
        id2label = config.get("id2label") or {}
        if sorted(map(str, id2label)) != sorted(str(k) for k in range(len(labels))):
            return labels  # the model side refuses a head of another size
        rows = [str(id2label[str(k)]) for k in range(len(labels))]
        ours = {name.lower(): name for name in labels}
        if len(ours) == len(labels) and sorted(r.lower() for r in rows) == sorted(ours):
            return [ours[r.lower()] for r in rows]
        default = [re.fullmatch(r"LABEL_(\d+)", r) for r in rows]
        if all(default) and sorted(int(m.group(1)) for m in default) == list(range(len(labels))):
            return [labels[int(m.group(1))] for m in default]
        architectures = config.get("architectures") or []
        with_head = not architectures or any(str(a).endswith("ForSequenceClassification") for a in architectures)
        if all(_number(name) is not None for name in labels) or not with_head:
            return labels
        raise UserError(
            f"{self.pretrained}: its classification head predicts {', '.join(rows)} but the data's labels are "
            f"{', '.join(labels)}: name the data's labels as the checkpoint does, or fine-tune a checkpoint without "
            "its classification head"
        )

    def training_parts(self) -> list[str]:
        """The training texts, a pair's two parts apart: what a subword model for this data is trained on."""
        texts, _ = self.read_split("train")
        return [part for t in texts for part in t.split("\t") if part]

    def location(self, split: str, i: int) -> str:
        """Where example `i` of `split` comes from, for error messages (a reader on files says file:line)."""
        return f"the {split} split, example {i + 1}"

    def example_length(self, example: ClsExample) -> int:
        return len(example[0])

    def collate_fn(self) -> partial:
        return partial(collate_classification, pad_id=self.tokenizer.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"labels": self.labels}  # the label mapping travels with every checkpoint


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _number(name: str) -> float | None:
    """The value of a label written as a decimal number ("2", "-1", "3.8", "1e3"), else None ("nan" and "inf" too)."""
    return float(name) if NUMBER.fullmatch(name.strip()) else None


def _label_order(name: str) -> tuple[int, float, str]:
    """Number labels in numeric order (2 before 10), then the rest alphabetically."""
    value = _number(name)
    return (1, 0.0, name) if value is None else (0, value, name)


# --- data=synthetic_classification -----------------------------------------------------------------------------------
class SyntheticClassificationDataModule(ClassificationDataModule):
    """`data=synthetic_classification`: the negation-scope task, generated from the seed.

    `regime`: `clean` (the default: 20k examples over 60 nouns and 40 adjectives drawn uniformly, exact labels) or
    `real` (`data=synthetic_classification_real`: 20k examples, 100 nouns and 10,000 adjectives drawn with Zipfian
    frequencies, a long tail of rare words and test words never seen in training, which the word vocabulary, taken
    from the training texts as on a real data set, leaves unknown; 4% of the training labels flipped). The size,
    lexicon and `label_noise` arguments left None take the regime's value (sources.synthetic.CLASSIFICATION_REGIMES).
    `label_noise`: the fraction of training examples whose label is flipped (exactly round(label_noise * n) of them,
    drawn from their own random stream: the texts stay the same); valid and test labels are always right."""

    def __init__(
        self,
        seed: int = 0,
        train_size: int | None = None,
        valid_size: int = 500,
        test_size: int = 1000,
        n_nouns: int | None = None,
        n_adjectives: int | None = None,
        regime: str = "clean",
        label_noise: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(seed=seed, **kwargs)
        given = {"train_size": train_size, "n_nouns": n_nouns, "n_adjectives": n_adjectives, "label_noise": label_noise}
        v = regime_defaults(CLASSIFICATION_REGIMES, regime, given)
        for name, n in (("train_size", v["train_size"]), ("valid_size", valid_size), ("test_size", test_size)):
            if n < 1:
                raise UserError(f"data.{name} must be positive, got {n}")
        check_fraction("label_noise", v["label_noise"], 0.5)
        self.regime = regime
        self.label_noise = float(v["label_noise"])
        self.task = NegationScopeTask(seed, v["n_nouns"], v["n_adjectives"], zipf=regime == "real")
        self.sizes = {"train": v["train_size"], "valid": valid_size, "test": test_size}
        self.noisy: list[int] = []  # the indices of the training examples whose label is flipped

    def build_tokenizer(self) -> Tokenizer:
        if self.regime == "real":  # as on a real data set: the words of the training texts, others unknown
            return WordTokenizer({w for text in self.read_split("train")[0] for w in text.split()})
        return WordTokenizer(self.task.vocabulary())

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        rng = random.Random(f"negation-{split}-{self.seed}")
        pairs = [self.task.example(rng) for _ in range(self.sizes[split])]
        texts, labels = [t for t, _ in pairs], [y for _, y in pairs]
        if split == "train" and self.label_noise > 0:
            noise = random.Random(f"negation-label-noise-{self.seed}")
            self.noisy = sorted(noise.sample(range(len(labels)), round(self.label_noise * len(labels))))
            flip = {"negated": "affirmed", "affirmed": "negated"}
            for i in self.noisy:
                labels[i] = flip[labels[i]]
        return texts, labels


# --- data=tsv_classification -----------------------------------------------------------------------------------------
class TsvClassificationDataModule(TextFiles, ClassificationDataModule):
    """`data=tsv_classification`: `{train,dev,test}.tsv` in `data.dir` (plain or .gz), one example per line,
    `text<TAB>label` or, for sentence pairs (NLI), `text_a<TAB>text_b<TAB>label`. Labels may be strings or
    integers (numbers that are not whole are scores, refused); the mapping (sorted, integers numerically, or the
    order of a pretrained classifier's head) is stored with the run. A header row is detected
    by its last field (label, gold_label, class, ...) or forced with `data.header=true|false`. Texts are cut
    into SentencePiece subwords trained on the training texts, as for translation (or by a pretrained model's own
    tokenizer, `tokenizer=`); a pair is framed by the tokenizer, [CLS] text_a EOS text_b EOS with prunelab's own."""

    def __init__(
        self,
        train_file: str = "train.tsv",
        valid_file: str = "dev.tsv",
        test_file: str = "test.tsv",
        header: bool | str = "auto",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if header not in (True, False, "auto"):
            raise UserError(f"data.header must be true, false or auto, got {header!r}")
        self.header = header
        self.check_spm_settings()
        self.files: dict[str, Path] = {}
        for split, name, key in (
            ("train", train_file, "train_file"),
            ("valid", valid_file, "valid_file"),
            ("test", test_file, "test_file"),
        ):
            plain = self.data_dir / name
            if (found := find_file(plain)) is None:
                raise UserError(
                    f"{split} file not found: {plain} (nor {plain.name}.gz); set data.{key}=... if it has another name"
                )
            self.files[split] = found
        self._read: dict[str, tuple[list[str], list[str]]] = {}
        self._line_numbers: dict[str, list[int]] = {}  # file line of each example, for error messages
        self.pairs: bool | None = None  # decided by the training file's first example

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if split not in self._read:
            path = self.files[split]
            texts, labels, self._line_numbers[split], self.pairs = read_tsv(
                path, self.utf8_errors, self.header, self.pairs
            )
            self._read[split] = (texts, labels)
        return self._read[split]

    def location(self, split: str, i: int) -> str:
        return f"{self.files[split]}:{self._line_numbers[split][i]}"

    def label_source(self) -> str:
        return f"{self.files['train']} (the last field of each line)"

    def _spm_sources(self) -> list[Path]:
        return [self.files["train"]]

    def _spm_sentences(self) -> list[str]:
        return self.training_parts()

    def release_text(self) -> None:
        self._read.clear()
        self._line_numbers.clear()


# --- data=hf_classification ------------------------------------------------------------------------------------------
class HfClassificationDataModule(HfDatasetSource, ClassificationDataModule):
    """`data=hf_classification`: a classification data set through `datasets` (see `prunelab.data.sources.hf`):
    texts from `text_columns` (one column, or two for a pair; None: the usual names, TEXT_COLUMNS), labels from
    `label_column` (a ClassLabel's id k is class k)."""

    def __init__(self, text_columns: list[str] | None = None, label_column: str = "label", **kwargs: Any):
        super().__init__(**kwargs)
        self.text_columns = list(text_columns) if text_columns else None
        if self.text_columns is not None and len(self.text_columns) not in (1, 2):
            raise UserError(f"data.text_columns must name one column or two (a pair), got {self.text_columns}")
        self.label_column = label_column
        self._read: dict[str, tuple[list[str], list[str]]] = {}

    def columns(self, ds: Any) -> list[str]:
        have = set(ds.column_names)
        if self.text_columns is not None:
            self.check_columns(ds, self.text_columns)
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
        labels = [names[y] if names else label_name(y) for y in raw]
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

    def release_text(self) -> None:
        self._read.clear()
