"""WikiText-2's test text exactly as the one-shot pruning papers score it (SparseGPT, Wanda: the Hugging Face split
`wikitext-2-raw-v1` test, its 4,358 rows joined with "\\n\\n"), rebuilt offline from two public snapshots:

- the non-empty rows, in order: `data/wikitext-2-raw/wiki.test.raw` of github.com/Tylogi/TyloQuant (CRLF line ends);
- where the blank rows go: `data/wikitext-2/test.txt` of github.com/reichenbch/Word-Level-Language-Model (the
  tokenized text, `<unk>` for rare words, one line per row of the same split, a blank row a line of one space).

A non-empty row of the split is its line with the "\\n" it ended with; a blank row is "". The result must have the
published SHA-256 (4,358 rows, 2,891 non-empty, 1,296,370 bytes), or nothing is written.

    python -m experiments.wikitext2.build RAW TOKENIZED OUT_DIR    # writes OUT_DIR/test.txt

`data=lm_text data.dir=OUT_DIR data.documents=joined` then tokenizes the file whole (tokenizer(text)), the papers'
protocol. Get the inputs with `git show HEAD:<path>` in clones of the two repositories."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

SHA256 = "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
ROWS, NON_EMPTY = 4358, 2891


def split_rows(raw: str, tokenized: str) -> list[str]:
    """The split's rows: `raw`'s non-empty lines (CR taken off) in the places `tokenized`'s non-blank lines take."""
    lines = [line.removesuffix("\r") for line in raw.split("\n")]
    text = iter([line for line in lines if line.strip()])
    layout = tokenized.removeprefix("\ufeff").split("\n")
    if layout and layout[-1] == "":  # the file's last newline
        layout.pop()
    rows = []
    for line in layout:
        if not line.strip():
            rows.append("")
            continue
        row = next(text, None)
        if row is None:
            raise ValueError("the tokenized file has more non-blank lines than the raw file has lines")
        rows.append(row + "\n")
    if next(text, None) is not None:
        raise ValueError("the raw file has more non-empty lines than the tokenized file has non-blank lines")
    return rows


def papers_text(raw: str, tokenized: str) -> str:
    """The papers' evaluation text: the rows joined with "\\n\\n"."""
    return "\n\n".join(split_rows(raw, tokenized))


def build(raw: Path, tokenized: Path, out: Path, sha256: str = SHA256) -> Path:
    """OUT/test.txt, written only when the text has `sha256`; a mismatch is one error naming both hashes."""
    text = papers_text(raw.read_text(encoding="utf-8"), tokenized.read_text(encoding="utf-8"))
    data = text.encode("utf-8")
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise ValueError(f"the rebuilt text has SHA-256 {got} ({len(data):,} bytes), not the papers' {sha256}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "test.txt").write_bytes(data)
    return out / "test.txt"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[-2], file=sys.stderr)
        return 2
    try:
        path = build(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: {ROWS:,} rows ({NON_EMPTY:,} non-empty) joined with two newlines, SHA-256 {SHA256}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
