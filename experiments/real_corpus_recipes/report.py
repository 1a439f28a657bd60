"""The recipes table of issue 24 (defect 13) from the results.json of each run that run.sh keeps: for every arm
its optimizer steps, how the run ended, validations, the tested checkpoint's validation score, and its test scores.
Each arm is compared with the defaults arm of its corpus by paired bootstrap resampling of the test set (1,000
resamples of the test sentences, the same resamples for both systems; Koehn 2004): the share of resamples in
which the arm scores higher. It needs the test references, read again from the data folder each run recorded;
without them the column says so.

    python experiments/real_corpus_recipes/report.py experiments/real_corpus_recipes/results
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

RESAMPLES = 1000


def ended_by(res: dict[str, Any]) -> str:
    level = res["levels"][-1]
    if level["time"].get("stopped_by_budget"):
        return "time budget"
    if level["time"]["steps"] < res["config"]["trainer"]["max_steps"]:
        return "early stopping"
    return "max_steps"


def references(res: dict[str, Any]) -> list[str] | None:
    """The test references (gold labels) of the run's data, or None when its data folder is gone."""
    from hydra.utils import instantiate

    try:
        return instantiate(res["config"]["data"]).read_split("test")[1]
    except Exception:
        return None


def sentence_stats(hyps: list[str], refs: list[str], bleu: bool) -> list[list[int]]:
    """Per test sentence: BLEU's sufficient statistics, or [correct] for accuracy."""
    if not bleu:
        return [[int(h == r)] for h, r in zip(hyps, refs, strict=True)]
    from prunelab.scoring.variants import BleuStats

    bs = BleuStats()
    return [list(row) for row in bs.metric._extract_corpus_statistics(hyps, [refs])]


def paired_bootstrap(a: list[list[int]], b: list[list[int]], bleu: bool, seed: int = 0) -> float:
    """Share of resamples in which system a scores higher than system b (ties count half)."""
    from prunelab.scoring.variants import BleuStats

    bs = BleuStats()
    rng = random.Random(seed)
    n, wins = len(a), 0.0

    def score(rows: list[list[int]], idx: list[int]) -> float:
        total = [sum(rows[i][k] for i in idx) for k in range(len(rows[0]))]
        return bs.score(total) if bleu else total[0] / len(idx)

    for _ in range(RESAMPLES):
        idx = [rng.randrange(n) for _ in range(n)]
        sa, sb = score(a, idx), score(b, idx)
        wins += 1.0 if sa > sb else 0.5 if sa == sb else 0.0
    return wins / RESAMPLES


def main(folder: Path) -> str:
    arms = json.loads((folder / "arms.json").read_text())  # [{name, corpus, overrides, baseline}]
    out: list[str] = []
    for corpus in dict.fromkeys(a["corpus"] for a in arms):
        rows = [a for a in arms if a["corpus"] == corpus]
        results = {}
        for a in rows:
            path = folder / f"{a['name']}.results.json"
            results[a["name"]] = json.loads(path.read_text()) if path.is_file() else None
        done = [r for r in results.values() if r and r.get("status") == "completed"]
        bleu = bool(done) and "test/bleu" in done[0]["metrics"]
        key = "bleu" if bleu else "acc"
        refs = references(done[0]) if done else None
        stats = {}
        for a in rows:
            hyp = folder / f"{a['name']}.test.hyp.txt"
            if refs is not None and hyp.is_file():
                stats[a["name"]] = sentence_stats(hyp.read_text(encoding="utf-8")[:-1].split("\n"), refs, bleu)
        budget = done[0]["config"]["trainer"]["max_time"] if done else "?"
        out.append(f"### {corpus}: {budget:,} s each, one core each\n")
        score = "BLEU" if bleu else "accuracy (%)"
        out.append(
            f"| run | optimizer steps | ended by | validations | val {score} (tested checkpoint) | test {score} | "
            + ("test chrF | " if bleu else "")
            + "P(beats defaults), paired bootstrap |"
        )
        out.append("|---" * (8 if bleu else 7) + "|")
        base = next(a["name"] for a in rows if a.get("baseline"))
        for a in rows:
            r = results[a["name"]]
            label = f"{a['name']} (`{' '.join(a['overrides'])}`)"
            if not r or r.get("status") != "completed":
                out.append(f"| {label} | not run yet |" + " |" * (6 if bleu else 5))
                continue
            m, level = r["metrics"], r["levels"][-1]
            scale = 1 if bleu else 100
            cells = [
                label,
                f"{level['time']['steps']:,}",
                ended_by(r),
                str(level["time"]["validations"]),
                f"{scale * m[f'val/{key}']:.2f}",
                f"{scale * m[f'test/{key}']:.2f}",
            ]
            if bleu:
                cells.append(f"{m['test/chrf']:.1f}")
            if a["name"] == base:
                cells.append("—")
            elif a["name"] in stats and base in stats:
                cells.append(f"{paired_bootstrap(stats[a['name']], stats[base], bleu):.2f}")
            else:
                cells.append("(test references not available)")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    text = "\n".join(out)
    (folder / "tables.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
