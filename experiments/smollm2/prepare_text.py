"""A small `data=lm_text` folder (train.txt, valid.txt, test.txt) cut from the WikiText-2 raw test split.

Source: `wiki.test.raw` of WikiText-2 raw (Merity et al. 2016; CC BY-SA 3.0), the `test` split of the
`wikitext-2-raw-v1` configuration of huggingface.co/datasets/Salesforce/wikitext, as stored byte for byte in the
public GitHub repository Tylogi/TyloQuant (`data/wikitext-2-raw/wiki.test.raw`, 1,290,547 bytes, CRLF line ends,
blank lines removed, SHA-256 4f3e427e...; checked below). It is the text the SparseGPT and Wanda papers report
perplexity on; the whole split is about 302k SmolLM2 tokens, more than a 2-core CPU scores per run here, so it is cut
by article, in order:

    test.txt   the first --test-articles articles (default 4: Robert Boulter, Du Fu, Kiss You, Ise-class
               battleship; 19,627 SmolLM2 tokens with the EOS after each): the start of the papers' evaluation stream
    valid.txt  the next --valid-articles articles (default 2: Dick Rifenburg, 1933 Treasure Coast hurricane; 5,635
               tokens)
    train.txt  the other 54 articles (276,983 tokens): calibration text, disjoint from valid and test

An article starts at a title line ` = Title = ` (level-1 heading); two level-1-looking lines inside "Constant k
filter" are pieces of a formula split over lines (`= 1 rad / s and a nominal impedance k =`, `= 1 henry and
capacitance C =`) and do not start articles. A document (lm_text's blank-line format) is one article: its lines,
stripped, one per line (section headings ` = = Career = = ` included), articles separated by one blank line.
prunelab then puts the tokenizer's EOS after every article.

    .venv/bin/python experiments/smollm2/prepare_text.py /work/ext/wikitext2_raw/wiki.test.raw /work/ext/lm_wikitext2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

SHA256 = "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c"
TITLE = re.compile(r"^ = [^=].* = $")
NOT_TITLES = {" = 1 rad / s and a nominal impedance k = ", " = 1 henry and capacitance C = "}


def articles(raw: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        if TITLE.match(line) and line not in NOT_TITLES:
            out.append([])
        if not out:
            raise SystemExit(f"text before the first article title: {line[:60]!r}")
        out[-1].append(line.strip())
    return out


def write(path: Path, docs: list[list[str]]) -> None:
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", type=Path, help="wiki.test.raw (WikiText-2 raw, test split)")
    ap.add_argument("out", type=Path, help="the lm_text folder to write")
    ap.add_argument("--test-articles", type=int, default=4)
    ap.add_argument("--valid-articles", type=int, default=2)
    ap.add_argument("--no-check", action="store_true", help="skip the SHA-256 check of the source file")
    args = ap.parse_args()
    data = args.raw.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not args.no_check and digest != SHA256:
        raise SystemExit(f"{args.raw}: SHA-256 {digest}, expected {SHA256} (--no-check to use it anyway)")
    arts = articles(data.decode("utf-8"))
    t, v = args.test_articles, args.valid_articles
    splits = {"test": arts[:t], "valid": arts[t : t + v], "train": arts[t + v :]}
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"source": str(args.raw), "sha256": digest, "articles": len(arts)}
    for name, docs in splits.items():
        write(args.out / f"{name}.txt", docs)
        info[name] = {
            "articles": len(docs),
            "lines": sum(len(d) for d in docs),
            "words": sum(len(line.split()) for d in docs for line in d),
            "titles": [d[0].strip(" =") for d in docs] if name != "train" else None,
        }
    (args.out / "prepare.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print(
        json.dumps(
            {
                k: ({kk: vv for kk, vv in v.items() if kk != "titles"} if isinstance(v, dict) else v)
                for k, v in info.items()
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
