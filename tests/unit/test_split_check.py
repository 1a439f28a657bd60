"""split_check: a validation split drawn like the training data, while the test set is not, is said out loud."""

from __future__ import annotations

import random

from prunelab.data.splits import split_check


def examples(lengths: list[int], seed: int, vocab: int = 1000) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(n)], 0) for n in lengths]


def test_validation_held_out_from_training_phrases_is_flagged() -> None:
    """SST-2 as a user might split it: training phrases (short, many repeated), validation a part of training,
    test full sentences."""
    train = examples([4] * 400 + [9] * 400, seed=1, vocab=20)  # short phrases over a few words: many repeats
    valid = train[::10]  # a held-out part of train (also present in it: phrases repeat across the treebank)
    test = examples([20] * 100, seed=2)
    report = split_check({"train": train, "valid": valid, "test": test})
    assert report["valid"]["shared_with_train"] == 1.0 and report["test"]["shared_with_train"] == 0.0
    assert report["valid"]["mean_length"] == 6.5 and report["test"]["mean_length"] == 20.0
    assert len(report["warnings"]) == 2, report["warnings"]
    assert "100% of the validation inputs also occur in training" in report["warnings"][0]


def test_validation_and_test_drawn_alike_are_not_flagged() -> None:
    train, valid, test = examples([10] * 500, 1), examples([10] * 50, 2), examples([11] * 50, 3)
    report = split_check({"train": train, "valid": valid, "test": test})
    assert report["warnings"] == [] and report["valid"]["shared_with_train"] == 0.0


def test_shared_inputs_alike_in_validation_and_test_are_not_flagged() -> None:
    """A small-vocabulary task whose validation and test both repeat training inputs: both alike, no warning."""
    train = examples([3] * 300, 1, vocab=4)
    report = split_check({"train": train, "valid": train[:40], "test": train[40:80]})
    assert report["warnings"] == []
