"""chrF and the lowercased BLEU (`bleu_lc`) next to sacreBLEU: each value against sacrebleu's own API called here
independently, hand-made cases where the variants must differ, and the values a TranslationTask logs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import sacrebleu

from prunelab.data.translation import SyntheticTranslationDataModule
from prunelab.metrics import translation_scores
from prunelab.models import build_transformer
from prunelab.pruning import NoPruner
from prunelab.tasks.recipe import Recipe
from prunelab.tasks.translation import TranslationTask
from tests.conftest import quiet_trainer

HYPS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog!",
    "hello there, General Kenobi",
    "no overlap whatsoever here",
    "It's a well-known fact that translations differ.",
]
REFS = [
    "the cat is sitting on the mat.",
    "The quick brown fox jumped over the lazy dog.",
    "Hello there, general Kenobi.",
    "something else entirely different",
    "it is a well-known fact that translation differs.",
]


def signature(metric: sacrebleu.metrics.base.Metric) -> str:
    """sacrebleu's signature of a metric object (known once it has scored something: the number of references)."""
    metric.corpus_score(HYPS, [REFS])
    return str(metric.get_signature())


def test_every_value_is_sacrebleus() -> None:
    s = translation_scores(HYPS, REFS)
    assert s.bleu == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-12)
    assert s.ter == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score, abs=1e-12)
    assert s.chrf == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-12)
    assert s.bleu_lc == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS], lowercase=True).score, abs=1e-12)
    # the case differences of HYPS/REFS make the lowercased BLEU higher, and every score is a real one
    assert 0 < s.bleu < s.bleu_lc < 100 and 0 < s.chrf < 100


def test_signatures_say_how_each_score_was_computed() -> None:
    s = translation_scores(HYPS, REFS)
    assert s.chrf_signature == signature(sacrebleu.metrics.CHRF())
    assert s.bleu_lc_signature == signature(sacrebleu.metrics.BLEU(lowercase=True))
    assert s.bleu_signature == signature(sacrebleu.metrics.BLEU())
    assert "case:lc" in s.bleu_lc_signature and "tok:13a" in s.bleu_lc_signature
    assert "case:mixed" in s.bleu_signature and "tok:13a" in s.bleu_signature
    assert "nc:6" in s.chrf_signature and "nw:0" in s.chrf_signature  # chrF2: character 6-grams, no word n-grams
    assert "nrefs:1" in s.chrf_signature and "nrefs:1" in s.bleu_lc_signature


def test_case_only_differences_cost_bleu_but_not_bleu_lc() -> None:
    refs = ["the cat sat on the mat .", "a quick brown fox jumps over the lazy dog ."]
    hyps = ["The Cat sat on the Mat .", "A quick brown Fox jumps over the lazy Dog ."]
    s = translation_scores(hyps, refs)
    assert s.bleu_lc == pytest.approx(100.0)
    assert s.bleu < 100.0
    assert s.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-12)
    # chrF is case-sensitive as well (sacrebleu's default lowercase=False)
    assert s.chrf < 100.0


def test_chrf_rewards_partial_word_matches_where_bleu_gives_zero() -> None:
    refs = ["translation of the cat", "recognised by them"]
    hyps = ["translations off a cats", "recognized bye themselves"]  # no word in common with its reference
    s = translation_scores(hyps, refs)
    assert s.bleu == 0.0 and s.bleu_lc == 0.0
    assert s.chrf > 30.0
    assert s.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-12)


def test_identical_and_empty_output() -> None:
    same = translation_scores(REFS, REFS)
    assert same.bleu == pytest.approx(100.0) and same.bleu_lc == pytest.approx(100.0)
    assert same.chrf == pytest.approx(100.0)
    empty = translation_scores([""] * len(REFS), REFS)
    assert empty.bleu == empty.bleu_lc == empty.chrf == 0.0


def test_a_translation_task_logs_chrf_and_bleu_lc(tmp_path: Path) -> None:
    """val/ and test/ chrf and bleu_lc are in what validate/test return (what every level of results.json records),
    equal to sacrebleu on the hypotheses the task recorded; the run report carries their signatures."""
    L.seed_everything(0)
    dm = SyntheticTranslationDataModule(train_size=200, valid_size=10, test_size=10, max_tokens=512)
    dm.setup()
    model = build_transformer(
        vocab_size=dm.tokenizer.vocab_size, d_model=32, n_heads=2, d_ff=64, enc_layers=1, dec_layers=1, dropout=0.0
    )
    task = TranslationTask(model, NoPruner(), dm.tokenizer, beam_size=2, recipe=Recipe(warmup_steps=4))
    trainer = quiet_trainer(tmp_path, max_steps=12, val_check_interval=6)
    trainer.fit(task, datamodule=dm)
    for stage, split, data in ((trainer.validate, "val", "valid"), (trainer.test, "test", "test")):
        (metrics,) = stage(task, datamodule=dm, verbose=False)
        hyps = task.last_eval[split]["hypotheses"]
        refs = dm.read_split(data)[1]
        assert len(hyps) == len(refs) == 10
        assert metrics[f"{split}/chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-4)
        assert metrics[f"{split}/bleu_lc"] == pytest.approx(
            sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score, abs=1e-4
        )
        assert metrics[f"{split}/bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-4)
        assert metrics[f"{split}/chrf"] > 0  # a real value, not a placeholder
    report = task.run_report()
    assert report["chrf_signature"] == signature(sacrebleu.metrics.CHRF())
    assert report["bleu_lc_signature"] == signature(sacrebleu.metrics.BLEU(lowercase=True))
    assert set(report) == {"bleu_signature", "ter_signature", "chrf_signature", "bleu_lc_signature", "decoding"}
