"""The two layer layouts Phi and Gemma 2/3 bring, against the definitions the pruning code relies on:

- a sub-layer's component gate g scales what reaches the residual stream: the stream after it is affine in g
  (x + g·Δ). Under Gemma's sandwich norm a gate placed before the output RMSNorm would be divided out again
  (RMSNorm(g·y) = RMSNorm(y)), and gate-based importance would read ~0 for every component;
- block influence (Men et al. 2024) is 1 - cos(stream before, stream after) per sub-layer: brute force here from
  layer outputs with the other sub-layer gated off, for the sandwich-norm layer and for Phi's parallel layer with
  one shared norm (whose sub-layers both read the layer's input);
- Phi's shared norm stays when one of its two sub-layers is removed for real."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelab.criteria.components import block_influence
from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import TransformerConfig

LAYOUTS = {
    "gemma2": dict(norm="gemma_rms", ffn="glu", activation="gelu_tanh", sandwich_norm=True, attn_softcap=5.0),
    "phi": dict(parallel_residual=True, shared_norm=True, activation="gelu_tanh", rotary_dims=4),
}


def model_of(layout: str) -> CausalLM:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=50, d_model=16, n_heads=2, d_ff=32, enc_layers=0, dec_layers=2, dropout=0.0, positions="rope",
        embed_scale=False, max_len=64, **LAYOUTS[layout],
    )  # fmt: skip
    model = CausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def layer_io(model: CausalLM, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of decoder layer i in a forward pass of tokens x."""
    seen: dict[str, torch.Tensor] = {}
    hook = model.dec[i].register_forward_hook(lambda m, a, out: seen.update(inp=a[0], out=out))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen["inp"], seen["out"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["sa", "ff"])
def test_a_component_gate_scales_what_reaches_the_residual_stream(layout: str, kind: str) -> None:
    model = model_of(layout)
    x = torch.randint(0, 50, (2, 10))
    if kind == "sa" and not model.cfg.parallel_residual:  # the feed-forward after it reads the stream: off
        model.dec[1].ff.gate.fill_(0.0)
    gate = getattr(model.dec[1], kind).gate
    outs = {}
    for g in (0.0, 0.5, 1.0):
        gate.fill_(g)
        outs[g] = layer_io(model, 1, x)[1]
    delta = outs[1.0] - outs[0.0]
    assert delta.abs().max() > 0.1
    torch.testing.assert_close(outs[0.5], outs[0.0] + 0.5 * delta, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_block_influence_is_one_minus_the_cosine_of_the_stream_around_each_sub_layer(layout: str) -> None:
    model = model_of(layout)
    x = torch.randint(1, 50, (3, 12))  # no pad id (0): every position counts
    got = block_influence(model, [{"src": x, "target": x}])
    parallel = model.cfg.parallel_residual
    for i, layer in enumerate(model.dec):
        before, full = layer_io(model, i, x)
        layer.ff.gate.fill_(0.0)
        after_sa = layer_io(model, i, x)[1]  # x + Δ_sa
        layer.ff.gate.fill_(1.0)
        layer.sa.gate.fill_(0.0)
        after_ff_alone = layer_io(model, i, x)[1]  # x + Δ_ff (parallel: what ff adds to the layer's input)
        layer.sa.gate.fill_(1.0)
        want = {
            "sa": 1 - F.cosine_similarity(before, after_sa, dim=-1).mean(),
            "ff": 1 - F.cosine_similarity(*((before, after_ff_alone) if parallel else (after_sa, full)), dim=-1).mean(),
        }
        for kind, w in want.items():
            assert got[f"dec.{i}.{kind}"] == pytest.approx(float(w), abs=1e-5)
            assert float(w) > 1e-3


def test_phi_keeps_its_shared_norm_when_the_attention_is_removed() -> None:
    model = model_of("phi")
    x = torch.randint(0, 50, (2, 10))
    model.dec[0].sa.gate.fill_(0.0)
    with torch.no_grad():
        want = model(x)
    model.dec[0].sa.gate.fill_(1.0)
    model.dec[0].remove("sa")
    assert model.dec[0].norm is not None and model.dec[0].sa_res is None
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-6, rtol=1e-6)
