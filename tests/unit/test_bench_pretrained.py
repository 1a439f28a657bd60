"""The batches and output parsing of bench/pretrained.py (the `pretrained` section of `make bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from pretrained import classifier_batches, hf_rows, m2m100_418m, t5_base, translation_batches  # noqa: E402


def test_classifier_batches_are_cls_words_sep_then_pad() -> None:
    batches = classifier_batches(3, 5, 16, ids=(10, 50), pad=0, cls=1, sep=2, num_labels=3, seed=7)
    assert len(batches) == 3
    for b in batches:
        src = b["src"]
        assert src.shape == (5, 16) and b["label"].shape == (5,) and int(b["label"].max()) < 3
        n = src.ne(0).sum(1)
        assert int(n[0]) == 16 and int(n.min()) >= 8  # the first row fills the batch; lengths >= seq // 2
        assert torch.equal(b["attention_mask"], src.ne(0).long())
        for row, k in zip(src.tolist(), n.tolist(), strict=True):
            assert row[0] == 1 and row[k - 1] == 2 and row[k:] == [0] * (16 - k)  # right padding only
            assert all(10 <= t < 50 for t in row[1 : k - 1])
    again = classifier_batches(3, 5, 16, ids=(10, 50), pad=0, cls=1, sep=2, num_labels=3, seed=7)
    assert all(torch.equal(a["src"], b["src"]) for a, b in zip(batches, again, strict=True))  # seeded


def test_translation_batches_shift_the_target_behind_the_start() -> None:
    pad, eos, start = 99, 0, 99  # Marian: the decoder starts from pad
    for b in translation_batches(2, 4, 10, ids=(1, 99), pad=pad, eos=eos, start=start, seed=3):
        src, tgt_in, tgt_out = b["src"], b["tgt_in"], b["tgt_out"]
        assert src.shape == tgt_in.shape == tgt_out.shape == (4, 10)
        for t in (src, tgt_out):
            n = t.ne(pad).sum(1)
            assert int(n[0]) == 10
            for row, k in zip(t.tolist(), n.tolist(), strict=True):
                assert row[k - 1] == eos and eos not in row[: k - 1] and row[k:] == [pad] * (10 - k)
        assert (tgt_in[:, 0] == start).all()
        real = tgt_out.ne(pad)
        assert torch.equal(tgt_in[:, 1:][real[:, 1:]], tgt_out[:, :-1][real[:, 1:]])  # teacher forcing
        assert (tgt_in[~real] == pad).all()


def test_hf_rows_drop_the_start_and_cut_at_eos() -> None:
    out = torch.tensor([[9, 4, 5, 0, 9], [9, 0, 9, 9, 9], [9, 3, 3, 3, 3]])
    assert hf_rows(out, eos=0) == [[4, 5], [], [3, 3, 3, 3]]


def test_translation_batches_put_the_language_codes_first() -> None:
    pad, eos, start, src_code, tgt_code = 1, 2, 2, 90, 91  # M2M100: pad 1, </s> 2 is also the decoder start
    for b in translation_batches(2, 4, 10, (4, 90), pad, eos, start, seed=3, src_code=src_code, tgt_code=tgt_code):
        src, tgt_in, tgt_out = b["src"], b["tgt_in"], b["tgt_out"]
        assert (src[:, 0] == src_code).all() and (tgt_out[:, 0] == tgt_code).all()
        assert (tgt_in[:, 0] == start).all() and (tgt_in[:, 1] == tgt_code).all()  # [</s>] [de] y ...
        for t in (src, tgt_out):
            for row, k in zip(t.tolist(), t.ne(pad).sum(1).tolist(), strict=True):
                assert row[k - 1] == eos and eos not in row[: k - 1] and row[k:] == [pad] * (10 - k)
                assert all(4 <= w < 90 for w in row[1 : k - 1])  # the codes only in front


SEQ2SEQ_SMOKE = {"train_steps": 1, "train_reps": 1, "gen_reps": 1, "train_batch": 2, "seq": 8, "gen_batch": 2}
SEQ2SEQ_SMOKE |= {"src_len": 8, "new_tokens": 4, "layers": 1}
TINY = {
    "t5": (t5_base, {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64}),
    "m2m100": (
        m2m100_418m,
        {"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 64}
        | {"decoder_ffn_dim": 64},
    ),
}


@pytest.mark.parametrize("name", list(TINY))
def test_seq2seq_rows_time_the_same_work_on_both_sides(name: str) -> None:
    """The T5-base / M2M100-418M rows at a tiny width: the import gives transformers' logits, beam-4 generation gives
    `generate`'s tokens with every sentence run to the limit, and both sides train the same parameters."""
    pytest.importorskip("transformers")
    rows, changes = TINY[name]
    figures = rows(**SEQ2SEQ_SMOKE, config_changes=changes)
    train, gen = figures
    assert "(1+1 layers) training tok/s" in train.name and "(1+1 layers) generation tok/s, beam 4" in gen.name
    assert "same tokens as generate: yes" in gen.note and "NOT every sentence" not in gen.note
    diff = float(gen.note.rsplit("max |logit diff| ", 1)[1])
    assert diff < 1e-4
    counts = train.note.rsplit("trainable parameters ", 1)[1].split(" vs ")
    assert counts[0] == counts[1]
    assert all(f.value > 0 and f.goal == 1.0 for f in figures)
