"""Inference speed of a head-pruned model against the unpruned one, by batch size (Michel et al. 2019, Table 4).

Heads masked by their gates still cost their matrix products; only heads cut out of the projections
(`surgery.prune_heads`) can make a model faster. So the pruned copy here has its heads removed for real, and both
models are timed on the same sentences, batched by sentence count, interleaved run by run so that a slow moment of
the machine hits both. Studies floor: it times a Scorer (scoring/) on a run's data module.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from prunelab.data.batching import to_device
from prunelab.models.surgery import prune_heads
from prunelab.models.transformer import Transformer
from prunelab.scoring.scoring import Batch, Scorer


def batches_of(datamodule: Any, split: str, size: int, limit: int | None = None) -> list[Batch]:
    """`split`'s first `limit` examples (all when None) sorted by length, `size` per batch, collated as the data's
    own batches: a batch size in sentences, as Michel et al. report it, not in tokens."""
    examples = datamodule.examples[split][:limit] if limit else datamodule.examples[split]
    examples = sorted(examples, key=datamodule.example_length)
    collate = datamodule.collate_fn()
    return [collate(examples[i : i + size]) for i in range(0, len(examples), size)]


def without_heads(model: Transformer, heads: Sequence[str]) -> Transformer:
    """A copy of `model` with `heads` ("enc.0.sa.h3", ...) cut out of its projections; `model` is untouched."""
    pruned = copy.deepcopy(model)
    by_component: dict[str, list[int]] = defaultdict(list)
    for h in heads:
        comp, _, number = h.rpartition(".h")
        by_component[comp].append(int(number))
    prune_heads(pruned, by_component)
    return pruned


def speed_by_batch_size(
    model: Transformer,
    pruned: Transformer,
    datamodule: Any,
    scorer: Scorer,
    batch_sizes: Sequence[int] = (1, 4, 16, 64),
    sentences: int = 128,
    repeats: int = 3,
    split: str = "test",
    device: str | torch.device = "cpu",
) -> list[dict[str, float]]:
    """Examples per second of `model` and `pruned`, each scoring (decoding, for translation) the first `sentences`
    examples of `split` at each batch size; the median of `repeats` interleaved timings. The batches' tensors go
    to `device` (where the models are) before any timing. -> one row per batch size:
    {batch_size, sentences, dense_per_s, pruned_per_s, speedup, dense_score, pruned_score}."""
    rows = []
    for size in batch_sizes:
        batches = [to_device(b, device) for b in batches_of(datamodule, split, size, sentences)]
        n = sum(len(b["src"]) for b in batches)
        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        scores: dict[str, float] = {}
        for _ in range(repeats):
            for name, m in (("dense", model), ("pruned", pruned)):
                start = time.perf_counter()
                scores[name] = scorer.score(m, batches)
                times[name].append(time.perf_counter() - start)
        dense_s, pruned_s = statistics.median(times["dense"]), statistics.median(times["pruned"])
        rows.append(
            {
                "batch_size": size,
                "sentences": n,
                "dense_per_s": n / dense_s,
                "pruned_per_s": n / pruned_s,
                "speedup": dense_s / pruned_s,
                "dense_score": scores["dense"],
                "pruned_score": scores["pruned"],
            }
        )
    return rows
