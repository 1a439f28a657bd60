"""The batches and output parsing of bench/pretrained.py (the `pretrained` section of `make bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from pretrained import classifier_batches, hf_rows, translation_batches  # noqa: E402


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
