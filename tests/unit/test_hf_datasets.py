"""`data=hf_classification` / `data=hf_translation`: data sets built here with `datasets`, saved locally (no network),
read back through prunelab's data modules: the examples are those of the data set, label names come from its
ClassLabel, pairs from its `translation` column, and the usual mistakes are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunelab.data.hf_datasets import HfClassificationDataModule, HfTranslationDataModule
from prunelab.errors import UserError
from tests import hf_checkpoints as H

datasets = pytest.importorskip("datasets")


def save_classification(folder: Path, pairs: bool = False, hidden_test: bool = False) -> Path:
    names = ["negative", "positive"]
    features = {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    if pairs:
        features = {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": features["label"],
        }
    splits = {}
    for split, (n, seed) in {"train": (40, 1), "validation": (10, 2), "test": (12, 3)}.items():
        texts, labels = H.sentiment(n, seed)
        ids = [names.index(y) for y in labels]
        if hidden_test and split == "test":
            ids = [-1] * n
        cols = {"premise": texts, "hypothesis": texts[::-1]} if pairs else {"sentence": texts}
        splits[split] = datasets.Dataset.from_dict({**cols, "label": ids}, features=datasets.Features(features))
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def test_classification_from_a_saved_dataset(tmp_path: Path) -> None:
    path = save_classification(tmp_path / "sst")
    dm = HfClassificationDataModule(name=str(path), vocab_size=60, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    texts, labels = H.sentiment(12, 3)
    assert dm.labels == ["negative", "positive"]
    got = dm.examples["test"]
    assert [dm.labels[e[1]] for e in got] == labels and [e[2] for e in got] == labels
    tok = dm.tokenizer  # SentencePiece trained on the training sentences, cached under the text's key
    assert [tok.decode(e[0][1:-1]) for e in got] == texts
    assert len(list((tmp_path / "cache").glob("spm.*.model"))) == 1


def test_sentence_pairs_with_a_pretrained_tokenizer(tmp_path: Path) -> None:
    """premise/hypothesis are found without naming them, and the checkpoint's tokenizer frames the pair."""
    transformers = pytest.importorskip("transformers")
    path = save_classification(tmp_path / "nli", pairs=True)
    bert = H.encoder_checkpoint(tmp_path / "bert", *H.sentiment(40, 1), steps=0)
    dm = HfClassificationDataModule(name=str(path), tokenizer=str(bert))
    dm.prepare_data()
    dm.setup()
    hf = transformers.AutoTokenizer.from_pretrained(bert)
    texts, _ = H.sentiment(12, 3)
    for e, a, b in zip(dm.examples["test"], texts, texts[::-1], strict=True):
        want = hf(a, b)
        assert e[0] == want["input_ids"] and e[4] == want["token_type_ids"]


def test_hidden_test_labels_and_wrong_names_are_clear_errors(tmp_path: Path) -> None:
    path = save_classification(tmp_path / "glue", hidden_test=True)
    with pytest.raises(UserError, match=r"'test' split .* 12 examples without a label .* data\.test_split"):
        HfClassificationDataModule(name=str(path), vocab_size=60).setup()
    dm = HfClassificationDataModule(name=str(path), vocab_size=60, test_split="validation")
    dm.setup()  # GLUE's way: test on validation
    assert len(dm.examples["test"]) == 10
    with pytest.raises(UserError, match=r"no split 'dev' \(it has train, validation, test\)"):
        HfClassificationDataModule(name=str(path), valid_split="dev").setup()
    with pytest.raises(UserError, match=r"no column 'review'"):
        HfClassificationDataModule(name=str(path), text_columns=["review"]).setup()
    with pytest.raises(UserError, match=r"cannot load data set .*nowhere"):
        HfClassificationDataModule(name=str(tmp_path / "nowhere")).setup()


def test_classification_from_csv_files(tmp_path: Path) -> None:
    files = {}
    for split, seed in (("train", 1), ("validation", 2), ("test", 3)):
        texts, labels = H.sentiment(20, seed)
        rows = ["text,label", *(f"{t},{y}" for t, y in zip(texts, labels, strict=True))]
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
        files[split] = str(tmp_path / f"{split}.csv")
    dm = HfClassificationDataModule(name="csv", data_files=files, vocab_size=60, cache_dir=str(tmp_path / "c"))
    dm.setup()
    assert dm.labels == ["negative", "positive"]  # string labels: sorted
    assert [e[2] for e in dm.examples["test"]] == H.sentiment(20, 3)[1]


def test_translation_from_a_translation_column(tmp_path: Path) -> None:
    splits = {}
    for split, (n, seed) in {"train": (60, 1), "validation": (8, 2), "test": (8, 3)}.items():
        src, tgt = H.copy_pairs(n, seed)
        splits[split] = datasets.Dataset.from_dict(
            {"translation": [{"en": s, "de": t} for s, t in zip(src, tgt, strict=True)]}
        )
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "wmt"))
    dm = HfTranslationDataModule(name=str(tmp_path / "wmt"), src_lang="en", tgt_lang="de", vocab_size=60)
    dm.prepare_data()
    dm.setup()
    src, tgt = H.copy_pairs(8, 3)
    assert dm.references("test") == tgt
    assert [dm.tokenizer.decode(e[0][:-1]) for e in dm.examples["test"]] == src
    with pytest.raises(UserError, match=r"no 'fr' side \(they have de, en\)"):
        HfTranslationDataModule(name=str(tmp_path / "wmt"), src_lang="fr", tgt_lang="de").setup()
