"""`data=hf_classification` / `data=hf_translation`: data sets built here with `datasets`, saved locally (no network),
read back through prunelab's data modules: the examples are those of the data set, label names come from its
ClassLabel, pairs from its `translation` column, and the usual mistakes are one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunelab.data.classification import HfClassificationDataModule
from prunelab.data.translation import HfTranslationDataModule
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


# --- class order (issue 24, defect 6) and numeric labels (defect 11) -------------------------------------------------
MRPC = ["not_equivalent", "equivalent"]  # GLUE's ClassLabel names: not in alphabetical order
MNLI = ["entailment", "neutral", "contradiction"]


def save_labelled(folder: Path, label: object, values: dict[str, list]) -> Path:
    """A DatasetDict of `sentence` + `label` (feature `label`) with the given label values per split."""
    features = datasets.Features({"sentence": datasets.Value("string"), "label": label})
    splits = {}
    for seed, (split, ys) in enumerate(values.items()):
        texts, _ = H.sentiment(len(ys), seed + 1)
        splits[split] = datasets.Dataset.from_dict({"sentence": texts, "label": ys}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def three_splits(ids: list[int]) -> dict[str, list[int]]:
    return {"train": ids, "validation": ids[:8], "test": ids[::-1]}


def data(path: Path, **kw: object) -> HfClassificationDataModule:
    dm = HfClassificationDataModule(name=str(path), vocab_size=60, max_len=32, **kw)  # type: ignore[arg-type]
    dm.setup()
    return dm


def set_id2label(folder: Path, names: list[str], architecture: str | None = "BertForSequenceClassification") -> Path:
    """Rewrite a checkpoint's config.json as the hub has it: id2label/label2id `names`, `architectures`."""
    config = json.loads((folder / "config.json").read_text())
    config.update(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    if architecture is None:
        config.pop("architectures", None)
    else:
        config["architectures"] = [architecture]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def hub_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier trained by HF with "positive" on row 0 and "negative" on row 1, saved as most fine-tuned
    hub models are: config.json names its rows LABEL_0, LABEL_1."""
    folder = tmp_path_factory.mktemp("hub_bert")
    H.encoder_checkpoint(folder, *H.sentiment(160, 1), steps=50, names=["positive", "negative"])
    return set_id2label(folder, ["LABEL_0", "LABEL_1"])


@pytest.mark.parametrize("names", [MRPC, MNLI], ids=["mrpc", "mnli"])
def test_a_classlabel_id_is_the_class_id(tmp_path: Path, names: list[str]) -> None:
    """Class k is the ClassLabel's id k whatever the alphabet says, also for a class the training split lacks
    (MNLI's contradiction here)."""
    n = len(names)
    ids = [(i * 7) % n for i in range(30)]
    values = three_splits(ids)
    if n > 2:
        values["train"] = [y for y in ids if y != n - 1]  # the last class only in validation/test
    dm = data(save_labelled(tmp_path / "d", datasets.ClassLabel(names=names), values))
    assert dm.labels == names and dm.num_classes == n
    for split, key in (("train", "train"), ("valid", "validation"), ("test", "test")):
        assert [e[1] for e in dm.examples[split]] == values[key]
        assert [e[2] for e in dm.examples[split]] == [names[y] for y in values[key]]


def test_label_k_of_a_hub_checkpoint_is_classlabel_id_k(tmp_path: Path, hub_bert: Path) -> None:
    """End to end: the imported head's row k predicts the data's class k, as transformers' argmax on the same texts
    read through the ClassLabel gives (LABEL_k = id k), and the predictions are right."""
    import torch

    transformers = pytest.importorskip("transformers")
    from prunelab.hf.encoders import load_hf_encoder

    names = ["positive", "negative"]
    splits = {}
    for split, (n, seed) in {"train": (40, 1), "validation": (10, 2), "test": (48, 3)}.items():
        texts, labels = H.sentiment(n, seed)
        splits[split] = datasets.Dataset.from_dict(
            {"sentence": texts, "label": [names.index(y) for y in labels]},
            features=datasets.Features(
                {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
            ),
        )
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "sst"))
    dm = data(tmp_path / "sst", tokenizer=str(hub_bert))
    assert dm.labels == names
    texts, labels = H.sentiment(48, 3)
    test = dm.examples["test"]
    assert [e[1] for e in test] == [names.index(y) for y in labels]

    ours = load_hf_encoder(hub_bert, num_labels=dm.num_classes).eval()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(hub_bert).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hub_bert)
    with torch.no_grad():
        pred = [int(ours(torch.tensor([e[0]]), types=torch.tensor([e[4]])).argmax()) for e in test]
        hf_pred = hf(**tok(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert pred == hf_pred
    right = sum(p == e[1] for p, e in zip(pred, test, strict=True))
    assert right >= 0.9 * len(test)  # the checkpoint learned the task: its rows are the data's classes


def test_a_checkpoint_with_real_names_orders_the_classes(tmp_path: Path, hub_bert: Path) -> None:
    """id2label with the data's names (case aside) in another order: row k is the class the checkpoint names k;
    other names on a classification head are one clear error; a bare body's names do not matter."""
    import shutil

    path = save_labelled(tmp_path / "mnli", datasets.ClassLabel(names=MNLI), three_splits([i % 3 for i in range(30)]))
    ckpt = set_id2label(shutil.copytree(hub_bert, tmp_path / "ckpt"), ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"])
    dm = data(path, tokenizer=str(ckpt))
    assert dm.labels == ["contradiction", "neutral", "entailment"]
    assert all(dm.labels[e[1]] == e[2] for e in dm.examples["test"])
    assert [e[2] for e in dm.examples["test"]] == [MNLI[i % 3] for i in range(30)][::-1]

    set_id2label(ckpt, ["contradiction", "neutral", "other"])
    with pytest.raises(UserError, match=r"classification head .*contradiction, neutral, other.*entailment, neutral"):
        data(path, tokenizer=str(ckpt))
    set_id2label(ckpt, ["contradiction", "neutral", "other"], architecture="BertModel")  # no head: a fresh one
    assert data(path, tokenizer=str(ckpt)).labels == MNLI


def test_plain_integer_labels_in_numeric_order(tmp_path: Path) -> None:
    ids = [i % 12 for i in range(36)]
    dm = data(save_labelled(tmp_path / "d", datasets.Value("int64"), three_splits(ids)))
    assert dm.labels == [str(k) for k in range(12)]  # 10 after 9
    assert [e[1] for e in dm.examples["test"]] == ids[::-1]


def test_float_labels_are_refused_naming_the_column(tmp_path: Path) -> None:
    """STS-B: similarity scores are not classes (regression is not supported); whole-number floats are classes."""
    scores = [round(0.2 * (i % 26), 1) for i in range(30)]
    path = save_labelled(tmp_path / "stsb", datasets.Value("float32"), three_splits(scores))
    with pytest.raises(UserError, match=r"column 'label'.*regression is not supported"):
        data(path)
    whole = [float(i % 2) for i in range(30)]
    dm = data(save_labelled(tmp_path / "binary", datasets.Value("float64"), three_splits(whole)))
    assert dm.labels == ["0", "1"] and [e[1] for e in dm.examples["test"]] == [int(y) for y in whole[::-1]]
