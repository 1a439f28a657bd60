"""Is the validation split a fair stand-in for the test split? Early stopping and the best checkpoint are chosen on
validation; a validation split drawn from the training data (a held-out part of train, while the test set comes
from elsewhere: SST-2's phrases vs sentences, a corpus whose official test is another domain) makes both choices
optimistic, and nothing in the scores says so. `split_check` compares the splits' inputs (token ids) and says when.

    shared inputs   the fraction of a split's inputs that also occur in training (exact token ids)
    mean length     of a split's inputs, in tokens

A warning is given when validation shares at least `shared` of its inputs with training and the test split less
than half as much, or when validation's mean length is within 20% of training's but differs from the test's by more
than half. The figures go to results.json (`data_splits`) either way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def split_check(examples: dict[str, Sequence[Any]], shared: float = 0.2) -> dict[str, Any]:
    """{split: {examples, mean_length, shared_with_train}} and `warnings` (sentences for people), from examples
    whose first field is the input's token ids."""
    if not all(examples.get(s) for s in ("train", "valid", "test")):
        return {"warnings": []}
    train_inputs = {hash(tuple(e[0])) for e in examples["train"]}  # hashes: a few bytes per training example
    stats: dict[str, Any] = {}
    for split in ("train", "valid", "test"):
        items = examples[split]
        inside = sum(hash(tuple(e[0])) in train_inputs for e in items) if split != "train" else len(items)
        stats[split] = {
            "examples": len(items),
            "mean_length": sum(len(e[0]) for e in items) / len(items),
            "shared_with_train": inside / len(items),
        }
    warnings = []
    v, t, tr = stats["valid"], stats["test"], stats["train"]
    if v["shared_with_train"] >= shared and t["shared_with_train"] < v["shared_with_train"] / 2:
        warnings.append(
            f"{100 * v['shared_with_train']:.0f}% of the validation inputs also occur in training, "
            f"{100 * t['shared_with_train']:.0f}% of the test inputs: early stopping and the best checkpoint are "
            "chosen on data like the training data, and validation scores will be optimistic"
        )
    like_train = 0.8 <= v["mean_length"] / tr["mean_length"] <= 1.25
    unlike_test = not 2 / 3 <= v["mean_length"] / t["mean_length"] <= 1.5
    if like_train and unlike_test:
        warnings.append(
            f"validation inputs are {v['mean_length']:.1f} tokens long on average, like training's "
            f"({tr['mean_length']:.1f}), but the test's are {t['mean_length']:.1f}: validation is not drawn like the "
            "test set, so early stopping and the best checkpoint may not be the test's best"
        )
    return {**stats, "warnings": warnings}
