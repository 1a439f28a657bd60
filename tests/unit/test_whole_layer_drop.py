"""Whole-layer LayerDrop (fairseq's and transformers' `encoder_layerdrop` / `decoder_layerdrop`, which BART, mBART,
M2M100 and Marian checkpoints set, M2M100-418M to 0.05): in training, each encoder or decoder layer is skipped with
that chance, drawn once per layer per step; in eval nothing is skipped. The skipped set is checked against the
draws, and the output against the same network with those layers taken out."""

from __future__ import annotations

import copy

import torch

from prunelab.hf.bart import bart_config
from prunelab.hf.m2m100 import m2m100_config
from prunelab.hf.marian import marian_config
from prunelab.models import build_transformer


def model(p_enc: float, p_dec: float):
    torch.manual_seed(0)
    return build_transformer(
        vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=3, dec_layers=3, dropout=0.0, max_len=32,
        enc_layerdrop=p_enc, dec_layerdrop=p_dec,
    )  # fmt: skip


def test_training_skips_the_drawn_layers_whole() -> None:
    net = model(0.5, 0.5).train()
    src = torch.randint(3, 30, (2, 7))
    tgt = torch.randint(3, 30, (2, 5))
    skipped = []
    for seed in range(6):
        torch.manual_seed(seed)
        draws = [float(torch.rand(())) for _ in range(6)]  # one per layer: encoder layers, then decoder layers
        torch.manual_seed(seed)
        got = net(src, tgt)
        ref = copy.deepcopy(net).eval()
        for i, d in enumerate(draws):
            if d < 0.5:  # this layer is skipped: x passes through unchanged
                layer = ref.enc[i] if i < 3 else ref.dec[i - 3]
                for kind in layer.kinds:
                    layer.remove(kind)
        with torch.no_grad():
            want = ref(src, tgt)
        torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=1e-6)
        skipped.append(sum(d < 0.5 for d in draws))
    assert len(set(skipped)) > 1 and any(0 < k < 6 for k in skipped)  # draws differ; some layers go, some stay


def test_eval_skips_nothing_and_gradients_reach_every_parameter() -> None:
    net = model(0.5, 0.5)
    src, tgt = torch.randint(3, 30, (2, 7)), torch.randint(3, 30, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(src, tgt), model(0.0, 0.0).eval()(src, tgt))
    net.train()
    torch.manual_seed(1)
    net(src, tgt).sum().backward()
    assert all(p.grad is not None for p in net.parameters())  # skipped layers touched at zero cost (DDP)


def test_checkpoints_keep_their_layerdrop() -> None:
    common = dict(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
        pad_token_id=1, eos_token_id=2, encoder_layerdrop=0.05, decoder_layerdrop=0.1,
    )  # fmt: skip
    for to_config, kind in ((m2m100_config, "m2m_100"), (bart_config, "bart"), (marian_config, "marian")):
        cfg = to_config({**common, "model_type": kind})
        assert (cfg.enc_layerdrop, cfg.dec_layerdrop, cfg.layerdrop) == (0.05, 0.1, 0.0)
