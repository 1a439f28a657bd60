"""data=tsv_classification on small files the tests write: layouts, headers, labels, pairs, bad lines."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from prunelab.data.classification import CLS, TsvClassificationDataModule
from prunelab.data.tokenizer import EOS
from prunelab.errors import UserError

WORDS = "good bad film plot actor great awful boring fun story scene music".split()


def write(root: Path, rows: dict[str, list[str]], header: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        text = "\n".join(([header] if header else []) + lines) + "\n"
        (root / name).write_text(text, encoding="utf-8")
    return root


def single(n: int, labels: tuple[str, ...] = ("pos", "neg")) -> list[str]:
    return [f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]} {WORDS[(i * 7) % 12]}\t{labels[i % len(labels)]}" for i in range(n)]


def dm(root: Path, **kw: object) -> TsvClassificationDataModule:
    return TsvClassificationDataModule(dir=str(root), vocab_size=40, max_len=32, **kw)  # type: ignore[arg-type]


def files(n: int = 40, **kw: object) -> dict[str, list[str]]:
    return {"train.tsv": single(n, **kw), "dev.tsv": single(6, **kw), "test.tsv": single(6, **kw)}  # type: ignore[arg-type]


def test_text_label_with_header_string_labels(tmp_path: Path) -> None:
    d = dm(write(tmp_path, files(), header="sentence\tlabel"))
    d.setup()
    assert d.labels == ["neg", "pos"] and d.num_classes == 2
    assert len(d.examples["train"]) == 40 and d.pairs is False
    ids, label, name, _, types = d.examples["valid"][0]
    assert types is None  # prunelab's own tokenizer gives no token types
    assert ids[0] == CLS and ids[-1] == EOS and d.labels[label] == name == "pos"


def test_integer_labels_in_numeric_order_without_header(tmp_path: Path) -> None:
    d = dm(write(tmp_path, files(labels=("2", "10", "0"))))
    d.setup()
    assert d.labels == ["0", "2", "10"]
    assert len(d.examples["train"]) == 40  # no line taken for a header


def test_sentence_pairs_gz_and_crlf(tmp_path: Path) -> None:
    rows = [
        f"{WORDS[i % 12]} {WORDS[(i + 3) % 12]}\t{WORDS[(i + 1) % 12]}\t{('entailment', 'contradiction')[i % 2]}"
        for i in range(30)
    ]
    root = tmp_path / "nli"
    root.mkdir()
    with gzip.open(root / "train.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("premise\thypothesis\tgold_label\r\n" + "\r\n".join(rows) + "\r\n")
    write(root, {"dev.tsv": rows[:4], "test.tsv": rows[4:8]})
    d = dm(root)
    d.setup()
    assert d.pairs is True and d.labels == ["contradiction", "entailment"]
    ids = d.examples["train"][0][0]
    assert ids[0] == CLS and ids.count(EOS) == 2  # text_a EOS text_b EOS


def test_malformed_line_is_named_with_its_number(tmp_path: Path) -> None:
    rows = files()
    rows["train.tsv"][6] = "a line without a label"
    d = dm(write(tmp_path, rows, header="text\tlabel"))
    with pytest.raises(UserError, match=r"train\.tsv:8: expected 2 tab-separated fields \(text<TAB>label\), found 1"):
        d.setup()


def test_empty_lines_skipped_and_unknown_test_label(tmp_path: Path) -> None:
    rows = files()
    rows["train.tsv"].insert(3, "")
    rows["test.tsv"].insert(1, "")  # line numbers count the empty line too
    rows["test.tsv"][3] = "fun plot\tneutral"
    rows["test.tsv"][5] = "fun plot\tmixed"
    d = dm(write(tmp_path, rows, header="sentence\tlabel"))
    message = (
        f"{tmp_path / 'test.tsv'}:5: label 'neutral' is not among the training labels (neg, pos) "
        "(1 more with labels not seen in training)"
    )
    with pytest.raises(UserError) as err:
        d.setup()
    assert str(err.value) == message
    rows["test.tsv"][3] = rows["test.tsv"][5] = "fun plot\tpos"
    d = dm(write(tmp_path / "ok", rows))
    d.setup()
    assert len(d.examples["train"]) == 40


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"missing": "dev.tsv"}, "valid file not found"),
        ({"empty": "train.tsv"}, "train.tsv is empty"),
        ({"kw": {"header": "maybe"}}, "data.header must be true, false or auto"),
        ({"empty_label": True}, r"train\.tsv:2: expected 2 tab-separated fields"),  # "text<TAB>" (no label)
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, change: dict, message: str) -> None:
    rows = files()
    if "empty_label" in change:
        rows["train.tsv"][1] = "good film\t"
    root = write(tmp_path, rows)
    if "missing" in change:
        (root / change["missing"]).unlink()
    if "empty" in change:
        (root / change["empty"]).write_text("")
    with pytest.raises(UserError, match=message):
        dm(root, **change.get("kw", {})).setup()


def test_unknown_dev_label_names_file_line_and_label(tmp_path: Path) -> None:
    rows = files()
    rows["dev.tsv"][2] = "fun plot\t2"
    with pytest.raises(UserError) as err:
        dm(write(tmp_path, rows)).setup()
    assert str(err.value) == f"{tmp_path / 'dev.tsv'}:3: label '2' is not among the training labels (neg, pos)"


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    root = write(tmp_path, files())
    (root / "dev.tsv").write_bytes(b"good film\tpos\nbad caf\xe9\tneg\n")
    with pytest.raises(UserError) as err:
        dm(root).setup()
    assert str(err.value) == (
        f"{root / 'dev.tsv'}:2: not UTF-8 (byte 0xe9 at byte 8 of the line); convert the file "
        "(e.g. iconv -f latin1 -t utf-8) or set data.utf8_errors=replace"
    )
    d = dm(root, utf8_errors="replace")
    d.setup()
    assert d.examples["valid"][1][2] == "neg"


def test_non_integer_number_labels_are_refused(tmp_path: Path) -> None:
    """Similarity scores (STS-B as tsv) are not classes: regression is not supported; whole numbers stay classes."""
    d = dm(write(tmp_path, files(labels=("0.5", "3.8", "2", "4.25")), header="sentence\tlabel"))
    with pytest.raises(UserError, match=r"train\.tsv.*'0\.5'.*regression is not supported"):
        d.setup()
    d = dm(write(tmp_path / "whole", files(labels=("2.0", "10.0", "0"))))
    d.setup()
    assert d.labels == ["0", "2.0", "10.0"]
