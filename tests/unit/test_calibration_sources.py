"""Where calibration examples come from: the run's own split, a text file, or a `datasets` data set. Examples from
outside the run are encoded by the run's tokenizer exactly as its evaluation examples are (checked against the
tokenizer called directly), sampled with the same seed rule, and recorded in the report; malformed input is one
error line naming the file and the example."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.data.classification import SyntheticClassificationDataModule
from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.errors import UserError
from prunelab.pruning.calibration import calibration_set


@pytest.fixture(scope="module")
def nmt() -> SyntheticTranslationDataModule:
    dm = SyntheticTranslationDataModule(train_size=60, valid_size=10, test_size=10, max_tokens=512)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def cls() -> SyntheticClassificationDataModule:
    dm = SyntheticClassificationDataModule(seed=0, train_size=60, valid_size=5, test_size=5)
    dm.setup()
    return dm


def rows(batches: list[dict], key: str, pad: int) -> list[list[int]]:
    """Every example's ids in `key`, padding removed."""
    out = []
    for b in batches:
        for row in b[key]:
            out.append([int(x) for x in row if int(x) != pad])
    return out


def test_a_translation_file_is_encoded_as_evaluation_pairs(nmt: SyntheticTranslationDataModule, tmp_path: Path) -> None:
    src, tgt = nmt.read_split("test")
    path = tmp_path / "cal.tsv"
    path.write_text("".join(f"{s}\t{t}\n\n" for s, t in zip(src[:6], tgt[:6], strict=True)))  # blank lines skipped
    cal = calibration_set(nmt, n=4, max_tokens=None, seed=1, file=str(path))
    tok = nmt.tokenizer
    expected = sorted([*tok.encode(s), tok.eos_id] for s in src[:6])
    got = rows(cal.batches, "src", tok.pad_id)
    assert len(got) == 4 and all(g in expected for g in got)
    targets = {tuple(tok.encode_target(t)) for t in tgt[:6]}
    assert all(tuple(r[1:]) in targets for r in rows(cal.batches, "tgt_in", tok.pad_id))  # BOS + target
    assert cal.report["source"] == str(path) and cal.report["split"] is None
    assert (cal.report["examples"], cal.report["examples_available"]) == (4, 6)
    again = calibration_set(nmt, n=4, max_tokens=None, seed=1, file=str(path))
    assert torch.equal(again.batches[0]["src"], cal.batches[0]["src"])  # seeded: the same sample


def test_the_run_split_stays_the_default(nmt: SyntheticTranslationDataModule) -> None:
    cal = calibration_set(nmt, n=8, max_tokens=None, seed=0)
    assert cal.report["source"] == "the run's train split" and cal.report["split"] == "train"
    train = {tuple(e[0]) for e in nmt.examples["train"]}
    assert all(tuple(r) in train for r in rows(cal.batches, "src", nmt.tokenizer.pad_id))


def test_a_datasets_split_feeds_a_classifier(cls: SyntheticClassificationDataModule, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    texts, _ = cls.read_split("test")
    folder = tmp_path / "ds"
    datasets.DatasetDict(
        {"unlabelled": datasets.Dataset.from_dict({"id": list(range(5)), "sentence": texts[:5]})}
    ).save_to_disk(str(folder))
    cal = calibration_set(cls, n=5, max_tokens=None, seed=0, dataset=str(folder), dataset_split="unlabelled")
    expected = sorted(cls.tokenizer.classification_input([t], cls.max_len)[0] for t in texts[:5])
    assert sorted(rows(cal.batches, "src", cls.tokenizer.pad_id)) == expected  # the "sentence" column, guessed
    assert "unlabelled" in cal.report["source"]
    with pytest.raises(UserError, match=r"dataset_split='train': .* has unlabelled"):
        calibration_set(cls, n=5, max_tokens=None, seed=0, dataset=str(folder))
    with pytest.raises(UserError, match=r"pruner.calibration.columns: .* has no column 'text'"):
        calibration_set(
            cls, n=5, max_tokens=None, seed=0, dataset=str(folder), dataset_split="unlabelled", columns=["text"]
        )


def test_bad_calibration_sources_are_one_line(nmt: SyntheticTranslationDataModule, tmp_path: Path) -> None:
    path = tmp_path / "one_side.txt"
    path.write_text("a b c\n")
    with pytest.raises(UserError, match=rf"{path}, example 1: a translation calibration example is source<TAB>target"):
        calibration_set(nmt, n=4, max_tokens=None, seed=0, file=str(path))
    with pytest.raises(UserError, match=r"pruner.calibration.file=.*missing.txt: no such file"):
        calibration_set(nmt, n=4, max_tokens=None, seed=0, file=str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="are two sources: set one"):
        calibration_set(nmt, n=4, max_tokens=None, seed=0, file=str(path), dataset="x")
