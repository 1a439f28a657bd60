"""The one base of every data module (floor: data, above `hf` and `models`): the settings every task kind and every
source share, and the data's tokenizer.

A data module is `DataModule` + its task kind (`translation.py`, `classification.py`, `language_modeling.py`: what
an example is, how a split is encoded, batched and handed to the task) + a source (`sources/`: files, `datasets`, a
synthetic generator: where the text comes from and, without a pretrained checkpoint, how it is cut into tokens)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import lightning as L

from prunelab.data.batching import TokenBatchedLoaders
from prunelab.data.tokenizer import Tokenizer
from prunelab.hf.tokenizer import PretrainedTokenizer

# The data modules' `_target_` before data/ was laid out by task kind (issue 37), as finished runs recorded them in
# results.json: `training.load.load_run` rebuilds such a run's data with the class's present path.
MOVED_TARGETS = {
    f"prunelab.data.{old}.{name}": f"prunelab.data.{new}.{name}"
    for old, new, name in (
        ("synthetic", "translation", "SyntheticTranslationDataModule"),
        ("parallel_text", "translation", "ParallelTextDataModule"),
        ("hf_datasets", "translation", "HfTranslationDataModule"),
        ("hf_datasets", "classification", "HfClassificationDataModule"),
    )
}


class DataModule(TokenBatchedLoaders, L.LightningDataModule, ABC):
    """Batches of at most `max_tokens` tokens for training (`eval_max_tokens`, default the same, for validation and
    test), loaded by `num_workers` worker processes; `seed` is the data's own (what a synthetic source generates),
    `shuffle_seed` the training order (the run's seed; default `seed`). With `tokenizer=` a pretrained checkpoint's
    folder (by default the model's own `model.path`), that checkpoint's tokenizer and special ids are used instead
    of the one the source builds (`build_tokenizer`)."""

    kind: str  # the task kind it feeds (conf/task/<kind>.yaml)
    # how a checkpoint's tokenizer is read for this kind (a causal LM's: hf.tokenizer.PretrainedTokenizer's reading,
    # with the ids of a language model)
    pretrained_tokenizer: Callable[[str], Tokenizer] = PretrainedTokenizer

    def __init__(
        self,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int | None = None,
        tokenizer: str | None = None,
        **unknown: Any,
    ):
        if unknown:  # a data.* key no class in the chain takes: named against the kind's data module, as Python did
            # when each kind had its own __init__ (the sources' mixins pass on what they do not take)
            kind = next(c for c in type(self).__mro__ if "kind" in vars(c))
            raise TypeError(f"{kind.__name__}.__init__() got an unexpected keyword argument {next(iter(unknown))!r}")
        super().__init__()
        self.pretrained = tokenizer  # a checkpoint folder whose tokenizer replaces the data's own
        self.max_tokens = max_tokens
        self.eval_max_tokens = eval_max_tokens or max_tokens
        self.num_workers = num_workers
        self.seed = seed  # the data's own (what a synthetic task generates)
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed  # training order: the run's seed
        self._tokenizer: Tokenizer | None = None
        self.examples: dict[str, list[Any]] = {}

    @abstractmethod
    def build_tokenizer(self) -> Tokenizer:
        """The source's own tokenizer, used when no checkpoint's is given."""

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = self.pretrained_tokenizer(self.pretrained) if self.pretrained else self.build_tokenizer()
        return self._tokenizer

    def check_model_positions(self, max_positions: int) -> None:
        """Refuse, in one UserError line naming the data setting, examples that would feed a model of `max_positions`
        positions more than it has (called once the model is built, before anything runs). Kinds whose examples have
        no fixed length accept any model here."""

    def release_text(self) -> None:
        """Drop the raw text a source kept between prepare_data and setup (called once the examples are made)."""
