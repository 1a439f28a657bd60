"""experiments/wikitext2/build.py rebuilds the papers' WikiText-2 test text from a raw file of the non-empty rows and
a tokenized file that says where the blank rows go. Checked on a small made-up pair written the way the two public
snapshots are (CRLF raw lines; a BOM, one-space blank lines and `<unk>` in the tokenized one), against rows written
out by hand; the real files' hash is the builder's own check (not run here: the snapshots are not in the repo)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from experiments.wikitext2.build import build, papers_text, split_rows

RAW = " = Robert Boulter = \r\n Robert Boulter is an actor . \r\n = = Career = = \r\n"
TOKENIZED = "\ufeff \n = Robert <unk> = \n \n Robert <unk> is an actor . \n \n = = Career = = \n \n"


def test_rows_and_joined_text() -> None:
    rows = split_rows(RAW, TOKENIZED)
    assert rows == ["", " = Robert Boulter = \n", "", " Robert Boulter is an actor . \n", "", " = = Career = = \n", ""]
    assert papers_text(RAW, TOKENIZED) == "\n\n".join(rows)
    assert papers_text(RAW, TOKENIZED).startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert")  # row, "", row


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="more non-blank lines"):
        split_rows(RAW, TOKENIZED + " extra line \n")
    with pytest.raises(ValueError, match="more non-empty lines"):
        split_rows(RAW + " one more \r\n", TOKENIZED)


def test_the_hash_guards_the_output(tmp_path: Path) -> None:
    raw, tok = tmp_path / "raw", tmp_path / "tok"
    raw.write_bytes(RAW.encode())
    tok.write_bytes(TOKENIZED.encode())
    with pytest.raises(ValueError, match="not the papers'"):
        build(raw, tok, tmp_path / "out")  # the published hash: this small text is not it
    assert not (tmp_path / "out").exists()
    want = hashlib.sha256(papers_text(RAW, TOKENIZED).encode()).hexdigest()
    path = build(raw, tok, tmp_path / "out", sha256=want)
    assert path.read_bytes() == papers_text(RAW, TOKENIZED).encode()
