"""A small `data=lm_text data.documents=joined` folder (train.txt, valid.txt, test.txt) cut from WikiText-2's test
text exactly as the one-shot pruning papers score it.

Source: the test split of `wikitext-2-raw-v1` (Merity et al. 2016; CC BY-SA 3.0) as SparseGPT and Wanda join it,
`"\\n\\n".join(rows)` of its 4,358 rows (2,891 non-empty, each ending in "\\n"; a blank row is ""): the `test.txt`
that `python -m experiments.wikitext2.build` rebuilds offline (1,296,370 bytes, SHA-256 696cca6b...; checked below).
The whole text is about 300k SmolLM2 tokens, more than a 2-core CPU scores per run here, so it is cut by article, in
order, into three contiguous pieces of that text, each kept byte for byte (blank rows and the "\\n\\n" joins
included), whose concatenation is the whole text again:

    test.txt   from the text's start through the first --test-articles articles (default 4: Robert Boulter, Du Fu,
               Kiss You, Ise-class battleship): the start of the papers' evaluation stream
    valid.txt  the next --valid-articles articles (default 2: Dick Rifenburg, 1933 Treasure Coast hurricane)
    train.txt  the other 54 articles: calibration text, disjoint from valid and test

An article starts at a title row ` = Title = ` (level-1 heading) and runs, with the joins after its rows, up to the
next title row; two level-1-looking rows inside "Constant k filter" are pieces of a formula split over lines
(`= 1 rad / s and a nominal impedance k =`, `= 1 henry and capacitance C =`) and do not start articles. The test
file thus begins "\\n\\n = Robert Boulter = \\n\\n\\n\\n\\n Robert Boulter is ..." (the split's first row is blank),
as the papers' text does.

prunelab reads each file with `data.documents=joined`: the file's text tokenized whole, `tokenizer(text)` (SmolLM2's
tokenizer adds no special token), no EOS inserted -- the papers' `tokenizer("\\n\\n".join(rows))`. A cut falls
before a title row's leading space, after the joins' newlines, where the byte-level BPE splits anyway, so the test
stream is the first tokens of the papers' stream (parity.py checks this on the ids).

    .venv/bin/python experiments/smollm2/prepare_text.py /work/ext/wikitext2_papers/test.txt /work/ext/lm_wikitext2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

SHA256 = "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"  # experiments/wikitext2/build.py's
ROWS = 4358
JOIN = "\n\n"
TITLE = re.compile(r"^ = [^=].* = $")
NOT_TITLES = {" = 1 rad / s and a nominal impedance k = ", " = 1 henry and capacitance C = "}


def rows(text: str) -> list[tuple[int, str]]:
    """The split's rows with their offsets in `text` = JOIN.join(rows): a row is "" or one line ending in "\\n" (a
    non-empty row never starts with a newline, so where each row ends is unambiguous)."""
    out: list[tuple[int, str]] = []
    p = 0
    while True:
        if text.startswith("\n", p) or p == len(text):
            end = p  # a blank row
        else:
            end = text.find("\n", p) + 1 or len(text)  # a last row may lack its newline
        out.append((p, text[p:end]))
        if end == len(text):
            break
        if not text.startswith(JOIN, end):
            raise SystemExit(f"offset {end}: a row is not followed by {JOIN!r}: not a joined split")
        p = end + len(JOIN)
    if JOIN.join(r for _, r in out) != text:
        raise SystemExit("the rows do not join back into the text")
    return out


def article_starts(text: str) -> list[int]:
    """The offsets of the articles' title rows."""
    starts = []
    for offset, row in rows(text):
        line = row.removesuffix("\n")
        if TITLE.match(line) and line not in NOT_TITLES:
            starts.append(offset)
        elif not starts and row:
            raise SystemExit(f"text before the first article title: {line[:60]!r}")
    return starts


def cut(text: str, test_articles: int, valid_articles: int) -> dict[str, tuple[int, int]]:
    """test, valid, train: the [start, end) offsets of contiguous pieces of `text`, test from offset 0, train to the
    end (their concatenation is `text`)."""
    starts = article_starts(text)
    t, v = test_articles, valid_articles
    if not (t >= 1 and v >= 1 and t + v < len(starts)):
        raise SystemExit(f"{len(starts)} articles: cannot take {t} test and {v} valid articles and leave training text")
    a, b = starts[t], starts[t + v]
    return {"test": (0, a), "valid": (a, b), "train": (b, len(text))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text", type=Path, help="test.txt of experiments/wikitext2/build.py (the papers' joined text)")
    ap.add_argument("out", type=Path, help="the lm_text folder to write")
    ap.add_argument("--test-articles", type=int, default=4)
    ap.add_argument("--valid-articles", type=int, default=2)
    ap.add_argument("--no-check", action="store_true", help="skip the SHA-256 check of the source file")
    args = ap.parse_args()
    data = args.text.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not args.no_check and digest != SHA256:
        raise SystemExit(f"{args.text}: SHA-256 {digest}, expected {SHA256} (--no-check to use it anyway)")
    text = data.decode("utf-8")
    if not args.no_check and len(rows(text)) != ROWS:
        raise SystemExit(f"{args.text}: {len(rows(text))} rows, expected {ROWS}")
    pieces = cut(text, args.test_articles, args.valid_articles)
    all_rows = rows(text)
    starts = set(article_starts(text))
    args.out.mkdir(parents=True, exist_ok=True)
    info: dict = {"source": str(args.text.resolve()), "sha256": digest, "rows": len(all_rows), "articles": len(starts)}
    for name, (a, b) in pieces.items():
        piece = text[a:b]
        # the bytes as in the source: no newline translation, no trailing newline added
        (args.out / f"{name}.txt").write_bytes(piece.encode("utf-8"))
        mine = [(o, r) for o, r in all_rows if a <= o < b]  # the rows that start in the piece
        names = [r.strip(" =\n") for o, r in mine if o in starts]
        info[name] = {
            "byte_offset": len(text[:a].encode("utf-8")),
            "bytes": len(piece.encode("utf-8")),
            "rows": len(mine),
            "non_empty_rows": sum(1 for _, r in mine if r),
            "articles": len(names),
            "words": len(piece.split()),
            "titles": names if name != "train" else None,
        }
    (args.out / "prepare.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(info, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
