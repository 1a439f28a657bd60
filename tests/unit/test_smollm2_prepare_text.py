"""experiments/smollm2/prepare_text.py cuts the papers' joined WikiText-2 test text (experiments/wikitext2/build.py's
test.txt) by article into test / valid / train pieces that prunelab tokenizes whole (data.documents=joined). Checked
on a small made-up text joined the papers' way ("\\n\\n".join(rows), blank rows ""), against offsets and pieces
written out by hand: each piece is a byte-for-byte slice of the text, test starts at its start, the pieces join back
into it, a formula row that looks like a title does not start an article."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.smollm2.prepare_text import article_starts, cut, rows

ROWS = [
    "",
    " = Alpha = \n",
    "",
    " Alpha is a letter . \n",
    "",
    " = Beta = \n",
    "",
    " = = Use = = \n",
    " = 1 henry and capacitance C = \n",  # a formula piece, not an article (as in "Constant k filter")
    "",
    " = Gamma = \n",
    " Gamma ray . \n",
    "",
]
TEXT = "\n\n".join(ROWS)


def test_rows_are_recovered_with_their_offsets() -> None:
    got = rows(TEXT)
    assert [r for _, r in got] == ROWS
    assert all(TEXT[o : o + len(r)] == r for o, r in got)
    assert got[1][0] == 2  # after the blank first row and its join


def test_articles_and_pieces() -> None:
    alpha, beta, gamma = (TEXT.index(f" = {t} = \n") for t in ("Alpha", "Beta", "Gamma"))
    assert article_starts(TEXT) == [alpha, beta, gamma]
    pieces = cut(TEXT, 1, 1)
    assert pieces == {"test": (0, beta), "valid": (beta, gamma), "train": (gamma, len(TEXT))}
    test, valid, train = (TEXT[a:b] for a, b in pieces.values())
    # test: the text's start, blank rows and joins kept, up to (not including) the next title row
    assert test == "\n\n = Alpha = \n\n\n\n\n Alpha is a letter . \n\n\n\n\n"
    assert valid == " = Beta = \n\n\n\n\n = = Use = = \n\n\n = 1 henry and capacitance C = \n\n\n\n\n"
    assert test + valid + train == TEXT
    with pytest.raises(SystemExit):
        cut(TEXT, 2, 1)  # no article left for training


def test_text_before_the_first_title_is_refused() -> None:
    with pytest.raises(SystemExit, match="before the first article title"):
        article_starts("\n\n".join([" stray line \n", *ROWS]))


def test_command_writes_the_slices_unchanged(tmp_path: Path) -> None:
    src = tmp_path / "test.txt"
    src.write_bytes(TEXT.encode())
    script = Path(__file__).resolve().parents[2] / "experiments" / "smollm2" / "prepare_text.py"
    out = tmp_path / "lm"
    args = [sys.executable, str(script), str(src), str(out), "--test-articles", "1", "--valid-articles", "1"]
    subprocess.run([*args, "--no-check"], check=True, capture_output=True)
    files = {s: (out / f"{s}.txt").read_bytes() for s in ("test", "valid", "train")}
    assert files["test"] + files["valid"] + files["train"] == TEXT.encode()  # no newline added or translated
    info = json.loads((out / "prepare.json").read_text())
    assert info["test"]["titles"] == ["Alpha"] and info["valid"]["titles"] == ["Beta"]
    assert info["train"]["byte_offset"] == TEXT.index(" = Gamma")
    # without --no-check the published hash guards the input
    assert subprocess.run(args, capture_output=True).returncode != 0
