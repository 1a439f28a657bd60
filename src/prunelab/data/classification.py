"""Text classification data: the shared LightningDataModule and the embedded synthetic task.

An example is (ids framed by the tokenizer: [CLS] text EOS, label index, label name, line index, token types or
None). Batches hold up to `max_tokens` tokens, grouped by length, sharded per DDP rank, by the same sampler as
translation. With `tokenizer=` a pretrained checkpoint's folder (the model's own `model.path` by default), its
tokenizer frames the inputs ([CLS] a [SEP] b [SEP] and token types for BERT) instead of prunelab's own.
"""

from __future__ import annotations

import json
import logging
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from prunelab.data.batching import TokenBatchedLoaders, sample_validation
from prunelab.data.parallel_text import SentencePieceData, read_lines
from prunelab.data.tokenizer import BOS, Tokenizer, WordTokenizer
from prunelab.errors import UserError
from prunelab.hf.checkpoint import PretrainedTokenizer, resolve_checkpoint

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


class ClassificationDataModule(TokenBatchedLoaders, L.LightningDataModule, ABC):
    kind = "classification"

    def __init__(
        self,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_len: int = 256,
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
        self.num_workers = num_workers
        self.seed = seed  # the data's own (what a synthetic task generates)
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed  # training order: the run's seed
        self._tokenizer: Tokenizer | None = None
        self.examples: dict[str, list[ClsExample]] = {}
        self.labels: list[str] = []  # label names, index = class id (from the training split)

    # --- what a data source provides -------------------------------------------------------------
    @abstractmethod
    def build_tokenizer(self) -> Tokenizer: ...

    @abstractmethod
    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        """(texts, label names) of one split; a sentence pair is one text, its two parts joined by a tab."""

    # --- shared machinery ------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = PretrainedTokenizer(self.pretrained) if self.pretrained else self.build_tokenizer()
        return self._tokenizer

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict[str, Any]:
        """What the model builder needs from the data besides the vocabulary."""
        return {"num_classes": self.num_classes}

    def task_kwargs(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
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


# --- the embedded synthetic task --------------------------------------------------------------------
class NegationScopeTask:
    """Two clauses, exactly one of them negated, and a question about one of the two subjects:

        the glorp is not vaty and the brell is dobe ? glorp      -> negated
        the glorp is not vaty and the brell is dobe ? brell      -> affirmed

    Every input holds the same multiset of words whichever clause carries the "not", so a bag-of-words
    model is at chance; the label needs word order and the link between the queried noun and its clause.
    Variety: optional intensifiers and adjective pairs, clause joiners, and a third, never negated and
    never queried, distractor clause. Nouns and adjectives are drawn uniformly, or with `zipf` with Zipfian
    frequencies (rank r with weight 1 / (r + 1)), as words are in real text: a long tail of rare words."""

    JOINERS = ("and", "but", "while", "whereas")
    INTENSIFIERS = ("very", "rather", "quite")

    def __init__(self, seed: int, n_nouns: int = 60, n_adjectives: int = 40, zipf: bool = False):
        rng = random.Random(f"negation-lexicon-{seed}")
        onsets, vowels, codas = "b d f g k l m n p r s t v z br gl pl tr st".split(), "a e i o u".split(), "n r s l"
        words: set[str] = set()

        def fresh(count: int) -> list[str]:
            out = []
            while len(out) < count:
                w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 2)))
                w += rng.choice([*codas.split(), ""])
                if w not in words:
                    words.add(w)
                    out.append(w)
            return out

        self.nouns = fresh(n_nouns)
        self.adjectives = fresh(n_adjectives)
        self.zipf = zipf
        if zipf:
            from prunelab.data.synthetic import zipf_cum_weights

            self._noun_weights, self._adj_weights = zipf_cum_weights(n_nouns), zipf_cum_weights(n_adjectives)

    def vocabulary(self) -> set[str]:
        fixed = {"the", "is", "not", "?", *self.JOINERS, *self.INTENSIFIERS}
        return fixed | set(self.nouns) | set(self.adjectives)

    def _adjective(self, rng: random.Random) -> str:
        if self.zipf:
            return rng.choices(self.adjectives, cum_weights=self._adj_weights)[0]
        return rng.choice(self.adjectives)

    def _three_nouns(self, rng: random.Random) -> list[str]:
        if not self.zipf:
            return rng.sample(self.nouns, 3)
        out: list[str] = []
        while len(out) < 3:
            noun = rng.choices(self.nouns, cum_weights=self._noun_weights)[0]
            if noun not in out:
                out.append(noun)
        return out

    def _clause(self, rng: random.Random, noun: str, negated: bool) -> list[str]:
        words = ["the", noun, "is"] + (["not"] if negated else [])
        if rng.random() < 0.3:
            words.append(rng.choice(self.INTENSIFIERS))
        words.append(self._adjective(rng))
        if rng.random() < 0.2:
            words += ["and", self._adjective(rng)]
        return words

    def example(self, rng: random.Random) -> tuple[str, str]:
        n1, n2, n3 = self._three_nouns(rng)
        first_negated = rng.random() < 0.5
        words = [*self._clause(rng, n1, first_negated), rng.choice(self.JOINERS)]
        words += self._clause(rng, n2, not first_negated)
        if rng.random() < 0.3:  # a distractor clause: never negated, never asked about
            words += [rng.choice(self.JOINERS), *self._clause(rng, n3, False)]
        query_first = rng.random() < 0.5
        words += ["?", n1 if query_first else n2]
        return " ".join(words), "negated" if query_first == first_negated else "affirmed"


class SyntheticClassificationDataModule(ClassificationDataModule):
    """`data=synthetic_classification`: the negation-scope task, generated from the seed.

    `regime`: `clean` (the default: 20k examples over 60 nouns and 40 adjectives drawn uniformly, exact labels) or
    `real` (`data=synthetic_classification_real`: 20k examples, 100 nouns and 10,000 adjectives drawn with Zipfian
    frequencies, a long tail of rare words and test words never seen in training, which the word vocabulary, taken
    from the training texts as on a real data set, leaves unknown; 4% of the training labels flipped). The size, lexicon
    and `label_noise` arguments left None take the regime's value (synthetic.CLASSIFICATION_REGIMES). `label_noise`: the
    fraction of training examples whose label is flipped (exactly round(label_noise * n) of them, drawn from their
    own random stream: the texts stay the same); valid and test labels are always right."""

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
        from prunelab.data.synthetic import CLASSIFICATION_REGIMES, check_fraction, regime_defaults

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


def bag_of_words(texts: Sequence[str], vocab: dict[str, int]) -> Tensor:
    """Word-count vectors (N, V): the input of the bag-of-words baseline that the synthetic task defeats."""
    x = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        for w in t.split():
            x[i, vocab[w]] += 1
    return x


# --- real data sets on disk ------------------------------------------------------------------------------
HEADER_LABELS = {"label", "labels", "gold_label", "class", "category", "target", "y"}


class TsvClassificationDataModule(SentencePieceData, ClassificationDataModule):
    """`data=tsv_classification`: `{train,dev,test}.tsv` in `data.dir` (plain or .gz), one example per line,
    `text<TAB>label` or, for sentence pairs (NLI), `text_a<TAB>text_b<TAB>label`. Labels may be strings or
    integers (numbers that are not whole are scores, refused); the mapping (sorted, integers numerically, or the
    order of a pretrained classifier's head) is stored with the run. A header row is detected
    by its last field (label, gold_label, class, ...) or forced with `data.header=true|false`. Texts are cut
    into SentencePiece subwords trained on the training texts, as for translation (or by a pretrained model's own
    tokenizer, `tokenizer=`); a pair is framed by the tokenizer, [CLS] text_a EOS text_b EOS with prunelab's own."""

    def __init__(
        self,
        dir: str,
        vocab_size: int = 8000,
        spm_model_type: str = "unigram",
        spm_character_coverage: float = 1.0,
        spm_max_sentences: int = 2_000_000,
        train_file: str = "train.tsv",
        valid_file: str = "dev.tsv",
        test_file: str = "test.tsv",
        header: bool | str = "auto",
        cache_dir: str | None = None,
        utf8_errors: str = "strict",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.data_dir = Path(dir).expanduser().absolute()
        self.utf8_errors = utf8_errors
        self.vocab_size = vocab_size
        self.spm_model_type = spm_model_type
        self.spm_character_coverage = spm_character_coverage
        self.spm_max_sentences = spm_max_sentences
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir else None
        self._spm_file: Path | None = None
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
            gz = plain.with_name(plain.name + ".gz")
            if not plain.is_file() and not gz.is_file():
                raise UserError(
                    f"{split} file not found: {plain} (nor {gz.name}); set data.{key}=... if it has another name"
                )
            self.files[split] = plain if plain.is_file() else gz
        self._read: dict[str, tuple[list[str], list[str]]] = {}
        self._line_numbers: dict[str, list[int]] = {}  # file line of each example, for error messages
        self.pairs: bool | None = None  # decided by the training file's first example

    def read_split(self, split: str) -> tuple[list[str], list[str]]:
        if split in self._read:
            return self._read[split]
        path = self.files[split]
        lines = read_lines(path, self.utf8_errors)
        first = next((i for i, line in enumerate(lines) if line), None)
        if first is None:
            raise UserError(f"{path} is empty")
        last_field = lines[first].split("\t")[-1].strip().lower()
        skip_header = self.header is True or (self.header == "auto" and last_field in HEADER_LABELS)
        start = first + 1 if skip_header else first
        data_line = next((i for i in range(start, len(lines)) if lines[i]), None)
        if data_line is None:
            raise UserError(f"{path} has a header but no examples")
        if self.pairs is None:
            found = len(lines[data_line].split("\t"))
            if found not in (2, 3):
                raise UserError(
                    f"{path}:{data_line + 1}: expected text<TAB>label or text_a<TAB>text_b<TAB>label, "
                    f"found {found} tab-separated fields"
                )
            self.pairs = found == 3
        n = 3 if self.pairs else 2
        layout = "text_a<TAB>text_b<TAB>label" if self.pairs else "text<TAB>label"
        texts, labels, numbers, empty = [], [], [], 0
        for i in range(start, len(lines)):
            if not lines[i]:
                empty += 1
                continue
            numbers.append(i + 1)
            parts = lines[i].split("\t")
            if len(parts) != n:
                raise UserError(f"{path}:{i + 1}: expected {n} tab-separated fields ({layout}), found {len(parts)}")
            label = parts[-1].strip()
            if not label:
                raise UserError(f"{path}:{i + 1}: the label is empty")
            texts.append("\t".join(p.strip() for p in parts[:-1]))
            labels.append(label)
        if empty:
            log.warning("%s: skipped %d empty lines", path, empty)
        self._read[split] = (texts, labels)
        self._line_numbers[split] = numbers
        return texts, labels

    def location(self, split: str, i: int) -> str:
        return f"{self.files[split]}:{self._line_numbers[split][i]}"

    def label_source(self) -> str:
        return f"{self.files['train']} (the last field of each line)"

    def _spm_sources(self) -> list[Path]:
        return [self.files["train"]]

    def _spm_sentences(self) -> list[str]:
        return self.training_parts()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self._read.clear()
        self._line_numbers.clear()
