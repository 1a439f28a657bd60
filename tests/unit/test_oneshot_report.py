"""experiments/oneshot/report.py's verdicts on the papers' claims, from hand-made scores: each claim agrees when the
scores say so by more than the tie threshold (a clear margin for ≫), disagrees when they say the opposite, and is
inconclusive in between; the NMT done-when check (≤ 1 BLEU lost at 50% SparseGPT) follows its threshold."""

from __future__ import annotations

from experiments.oneshot.report import CLEAR, METHODS, verdicts_for
from experiments.reporting import NOISE

LEVELS = ("0.5", "0.6", "0.7", "2of4")


def scores(by_method: dict[str, dict[str, float]]) -> dict[tuple[str, str, str], float | None]:
    return {(m, lv, "r0"): by_method[m][lv] for m in METHODS for lv in LEVELS}


PAPER = {  # the papers' picture: SparseGPT ≥ Wanda ≫ magnitude, widening with sparsity; 2:4 below 50%
    "sparsegpt": {"0.5": 33.5, "0.6": 32.0, "0.7": 28.0, "2of4": 31.0},
    "wanda": {"0.5": 33.4, "0.6": 31.5, "0.7": 26.0, "2of4": 30.0},
    "magnitude": {"0.5": 31.0, "0.6": 27.0, "0.7": 15.0, "2of4": 24.0},
}


def test_the_papers_picture_agrees_with_every_claim() -> None:
    v = verdicts_for("nmt", scores(PAPER), dense=34.0)
    assert len(v) == 9 and all(x["verdict"] == "agree" for x in v.values()), v
    assert v["NMT: 50% SparseGPT without recovery loses at most 1 BLEU"]["evidence"] == "dense 34.00 → 33.50 (-0.50)"


def test_reversed_and_tied_scores() -> None:
    flipped = {m: dict(lv) for m, lv in PAPER.items()}
    flipped["sparsegpt"]["0.6"] = PAPER["wanda"]["0.6"] - 2 * NOISE["bleu"]  # below Wanda beyond the noise
    flipped["wanda"]["0.5"] = PAPER["magnitude"]["0.5"] + CLEAR["bleu"] / 2  # ahead, but not clearly
    for m in METHODS:
        flipped[m]["2of4"] = flipped[m]["0.5"]  # 2:4 costs nothing more
    v = verdicts_for("nmt", scores(flipped), dense=flipped["sparsegpt"]["0.5"] + 1.5)
    assert v["NMT: SparseGPT ≥ Wanda at 50-60%"]["verdict"] == "disagree"
    assert v["NMT: wanda ≫ magnitude at 50-60%"]["verdict"].startswith("inconclusive")
    assert v["NMT: 2:4 costs more than 50% unstructured"]["verdict"] == "inconclusive"
    assert v["NMT: 50% SparseGPT without recovery loses at most 1 BLEU"]["verdict"] == "disagree"


def test_classification_uses_accuracy_thresholds_and_skips_missing_runs() -> None:
    acc = {m: {lv: x * 2.5 for lv, x in s.items()} for m, s in PAPER.items()}
    full = scores(acc)
    v = verdicts_for("cls", full, dense=90.0)
    assert all(k.startswith("MiniLM/SST-2: ") for k in v) and "NMT" not in " ".join(v)
    partial = {k: (None if k[0] == "magnitude" else x) for k, x in full.items()}
    assert not any("magnitude" in k for k in verdicts_for("cls", partial, dense=90.0))  # not run: no verdict
