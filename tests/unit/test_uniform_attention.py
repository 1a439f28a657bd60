"""AttendOut's structural pruning: a layer whose attention map is dropped entirely attends with the
constant map 1/n, without Q and K, and equals the fully masked layer it replaces."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from prunelab.data.classification import CLS
from prunelab.data.tokenizer import EOS
from prunelab.models import Transformer, build_classifier
from prunelab.models.surgery import load_state_dict_with_heads, make_uniform


def classifier() -> Transformer:
    torch.manual_seed(0)
    m = build_classifier(num_classes=3, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2)
    return m.double().eval()


def test_uniform_layer_equals_the_fully_masked_one() -> None:
    m = classifier()
    src = torch.tensor([[CLS, 5, 6, 7, 8, EOS], [CLS, 9, EOS, 0, 0, 0]])
    attn = m.enc[1].sa
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    mask = m.key_mask(src)
    k, v = attn.project_kv(x)
    masked = attn(x, k, v, mask=mask, map_keep=torch.zeros((), dtype=torch.float64))  # the map dropped
    # independent: the mean of each head's values over the real keys, through O
    vals = v.masked_fill(~mask.transpose(-1, -2), 0).sum(2) / mask.sum(-1)[:, :, :1].double()  # (B, H, hs)
    want = attn.out_proj(vals.reshape(2, 1, 16)).expand(2, 6, 16)
    assert torch.allclose(masked, want, atol=1e-9)
    pruned = copy.deepcopy(attn)
    pruned.make_uniform()
    assert pruned.q_proj is None and pruned.k_proj is None
    k2, v2 = pruned.project_kv(x)
    assert k2 is None
    assert torch.allclose(pruned(x, k2, v2, mask=mask), masked, atol=1e-9)
    kept = attn(x, k, v, mask=mask, map_keep=torch.ones(2, dtype=torch.float64))  # per example, kept
    assert torch.allclose(kept, attn(x, k, v, mask=mask), atol=1e-12)


def test_whole_model_with_uniform_layers_saves_and_loads(tmp_path: Path) -> None:
    m = classifier()
    src = torch.tensor([[CLS, 5, 6, 7, EOS], [CLS, 9, EOS, 0, 0]])
    before = sum(p.numel() for p in m.parameters())
    make_uniform(m, ["enc.0.sa"])
    assert before - sum(p.numel() for p in m.parameters()) == 2 * (16 * 16 + 16)  # Q and K, with biases
    out = m(src)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    fresh = classifier()
    load_state_dict_with_heads(fresh, torch.load(tmp_path / "m.pt", weights_only=True))
    assert fresh.enc[0].sa.uniform and not fresh.enc[1].sa.uniform
    assert torch.equal(fresh(src), out)


def test_causal_uniform_is_the_running_mean() -> None:
    torch.manual_seed(1)
    from prunelab.models import build_transformer

    m = build_transformer(vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dec_layers=1).double().eval()
    attn = m.dec[0].sa
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    _, v = attn.project_kv(x)
    attn.make_uniform()
    y = attn(x, None, v, is_causal=True)
    running = torch.cumsum(v, 2) / torch.arange(1, 5, dtype=torch.float64)[None, None, :, None]
    assert torch.allclose(y, attn.out_proj(running.transpose(1, 2).reshape(1, 4, 16)), atol=1e-12)
