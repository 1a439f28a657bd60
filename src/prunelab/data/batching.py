"""Token-based batching with length bucketing (as in fairseq's `--max-tokens`)."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from prunelab.data.tokenizer import BOS, EOS, PAD
from prunelab.errors import UserError

Example = tuple[list[int], list[int], str, int]  # (source ids + EOS, target ids, raw reference, index)


def collate(
    examples: Sequence[Example], pad_id: int = PAD, bos_id: int = BOS, eos_id: int = EOS
) -> dict[str, Tensor | list[str] | int]:
    """-> src (B, S), tgt_in = BOS + y (B, T), tgt_out = y + EOS (B, T), refs, idx (B,), and n_tokens: the
    real (unpadded) source + target tokens, counted here on the CPU so training never syncs to count them.
    The ids are the tokenizer's (a Marian checkpoint's decoder starts from its pad id: bos_id = pad_id)."""
    B = len(examples)
    S = max(len(e[0]) for e in examples)
    T = max(len(e[1]) for e in examples) + 1
    src = torch.full((B, S), pad_id, dtype=torch.long)
    tgt_in = torch.full((B, T), pad_id, dtype=torch.long)
    tgt_out = torch.full((B, T), pad_id, dtype=torch.long)
    for i, (s, t, _, _) in enumerate(examples):
        src[i, : len(s)] = torch.tensor(s)
        tgt_in[i, : len(t) + 1] = torch.tensor([bos_id, *t])
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, eos_id])
    return {
        "src": src,
        "tgt_in": tgt_in,
        "tgt_out": tgt_out,
        "ref": [e[2] for e in examples],
        "idx": torch.tensor([e[3] for e in examples]),
        "n_tokens": sum(len(e[0]) + len(e[1]) + 1 for e in examples),
    }


def to_device(batch: dict[str, Any], device: str | torch.device, non_blocking: bool = False) -> dict[str, Any]:
    """A flat batch dict with its tensors on `device`; the rest (reference strings) as it is."""
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v for k, v in batch.items()}


def sample_validation(examples: list[Any], n: int | None, seed: int) -> list[Any]:
    """A fixed random sample of `n` validation examples, in their original order (None, or n >= len: all of them):
    cheaper validation during training; the test split is never sampled. The same seed gives the same sample."""
    if n is None or n >= len(examples):
        return examples
    if n < 1:
        raise UserError(f"data.valid_max_sentences must be null (all) or >= 1, got {n}")
    keep = sorted(random.Random(f"valid-sample-{seed}").sample(range(len(examples)), n))
    return [examples[i] for i in keep]


class TokenBatchSampler:
    """Groups examples of similar length so that each batch holds at most `max_tokens` padded tokens.

    Examples are sorted by length (ties broken randomly per epoch), cut greedily into batches, and the
    batches shuffled. Under DDP every rank gets every `num_replicas`-th batch; the batch list is padded
    by repetition so that all ranks take the same number of steps.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if len(lengths) == 0:
            raise ValueError("cannot batch an empty dataset")
        if max(lengths) > max_tokens:
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest example ({max(lengths)} tokens)")
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip = 0
        # Lightning reshuffles per epoch by calling `loader.batch_sampler.sampler.set_epoch(epoch)`
        self.sampler = self
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """The next iteration continues epoch `epoch` after its first `consumed` batches (exact resume)."""
        self.epoch, self._skip = epoch, consumed

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._make_batches())
        return self._cache[1]

    def _make_batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)  # random tie-breaking inside a length
        order.sort(key=lambda i: self.lengths[i])  # stable sort
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0
        for i in order:
            longest_if_added = max(longest, self.lengths[i])
            if cur and longest_if_added * (len(cur) + 1) > self.max_tokens:
                batches.append(cur)
                cur, longest_if_added = [], self.lengths[i]
            cur.append(i)
            longest = longest_if_added
        batches.append(cur)
        if self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1:
            rem = -len(batches) % self.num_replicas
            batches += batches[:rem]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        yield from self._batches()[skip:]

    def __len__(self) -> int:
        return len(self._batches())


class ResumableLoader(DataLoader):
    """A DataLoader whose place inside an epoch goes into Lightning checkpoints (Lightning saves and restores
    loaders that have state_dict/load_state_dict), so a run killed mid-epoch continues with exactly the
    batches it would have seen. `progress` returns (epoch, batches consumed in it) as the trainer counts
    them: the loader's own count would be off by the batch Lightning prefetches."""

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        epoch, consumed = self.progress()
        return {"epoch": epoch, "consumed": consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume(state["epoch"], state["consumed"])  # type: ignore[union-attr]


class TokenBatchedLoaders(ABC):
    """The train/valid/test loaders of a data module whose `examples[split]` are batched by tokens: length
    buckets, sharded per DDP rank, and a resumable training loader. A data module provides `example_length`
    and `collate_fn` (a light picklable callable, for worker processes), and the attributes `examples`,
    `tokenizer`, `max_tokens`, `eval_max_tokens`, `num_workers`, `shuffle_seed` (and Lightning's `trainer`).
    It also tells the model builder and the task what they take from the data (`model_kwargs`, `task_kwargs`)."""

    kind: str  # the task kind this data feeds: translation | classification
    examples: dict[str, list[Any]]
    max_tokens: int
    eval_max_tokens: int
    num_workers: int
    shuffle_seed: int

    def model_kwargs(self) -> dict[str, Any]:
        """What the model builder needs from the data besides the vocabulary (a classifier: its classes)."""
        return {}

    @abstractmethod
    def task_kwargs(self) -> dict[str, Any]:
        """What the task (LightningModule) takes from the data: the tokenizer, or the label names."""

    @abstractmethod
    def example_length(self, example: Any) -> int:
        """Tokens the example occupies in a batch."""

    @abstractmethod
    def collate_fn(self) -> Callable[[Sequence[Any]], dict[str, Any]]:
        """The collate function of this data's batches."""

    def _loader(self, split: str, max_tokens: int, shuffle: bool) -> DataLoader:
        trainer = self.trainer  # type: ignore[attr-defined]
        lengths = [self.example_length(e) for e in self.examples[split]]
        sampler = TokenBatchSampler(
            lengths,
            max_tokens=max(max_tokens, max(lengths)),
            shuffle=shuffle,
            seed=self.shuffle_seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        kwargs = {
            "batch_sampler": sampler,
            "collate_fn": self.collate_fn(),
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
        }
        if split == "train" and trainer is not None:
            return ResumableLoader(self.examples[split], progress=self._train_progress, **kwargs)  # type: ignore[arg-type]
        return DataLoader(self.examples[split], **kwargs)  # type: ignore[arg-type]

    def _train_progress(self) -> tuple[int, int]:
        loop = self.trainer.fit_loop  # type: ignore[attr-defined]
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.completed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.max_tokens, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", self.eval_max_tokens, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_max_tokens, shuffle=False)


# --- the real tokens of a batch (padding left out): what calibration, width scores and block influence count ---
def batch_real_tokens(batch: dict[str, Any], pad: int) -> Tensor | None:
    """The real tokens of a batch's inputs: its `real` mask where the data gives one (a language model pads with a
    token that also occurs in the text), else the positions that are not `pad`; None when nothing is padding."""
    if "real" in batch:
        real = batch["real"]
        return None if bool(real.all()) else real
    return real_tokens(batch["src"], pad)


def real_tokens(ids: Tensor, pad: int) -> Tensor | None:
    """(B, T) bool of the real tokens of a batch, or None when there is no padding (the hooks then take every row
    without copying them out)."""
    real = ids != pad
    return None if bool(real.all()) else real


def decoder_positions(batch: dict[str, Any], pad: int) -> Tensor | None:
    """(B, T) bool of an encoder-decoder batch's real decoder positions, or None when none is padding: those with a
    target (`tgt_out != pad`), the positions the loss counts. Not `tgt_in != pad`: a Marian decoder starts from its
    pad id, so its first input is the pad id at a real position."""
    return real_tokens(batch["tgt_out"], pad)
