"""The rotary frequencies stay fp32 whatever casts the model: `.to(dtype)`, `.half()`, `.bfloat16()`, Lightning's
`bf16-true` plugin, a round trip back to fp32, `to_empty` from the meta device. They are multiplied by positions in
the thousands, so a bf16 copy of them (8 bits) moves the angles at position 2,047 by radians (|cos error| 1.7 with
Llama-2's rotary settings), and a bf16 model's late-position logits drift away from the fp32 model's."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from lightning.pytorch.plugins.precision import HalfPrecision
from torch import Tensor

from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import TransformerConfig

HS = 128  # Llama-2's head width and rope_theta
THETA = 10000.0
LATE = 2047


def llama2_like(**changes: object) -> TransformerConfig:
    """A 2-layer Llama (RMSNorm, SwiGLU, grouped-query attention) with Llama-2's rotary settings, 2,048 positions."""
    kw: dict[str, object] = dict(
        vocab_size=128,
        d_model=2 * HS,
        n_heads=2,
        n_kv_heads=1,
        d_ff=512,
        enc_layers=0,
        dec_layers=2,
        dropout=0.0,
        max_len=LATE + 1,
        norm="rms",
        ffn="glu",
        activation="silu",
        embed_scale=False,
        positions="rope",
        rope_theta=THETA,
        qkv_bias=False,
        out_bias=False,
        ff_bias=False,
        tie_embeddings=False,
    )
    return TransformerConfig(**{**kw, **changes})  # type: ignore[arg-type]


def tables(model: CausalLM, offset: int = 0, T: int = LATE + 1) -> tuple[Tensor, Tensor]:
    return model.rope(offset, T, torch.float32)  # type: ignore[return-value]


CASTS: dict[str, Callable[[CausalLM], CausalLM]] = {
    "to(bfloat16)": lambda m: m.to(torch.bfloat16),
    "to(cpu, float16)": lambda m: m.to("cpu", torch.float16),
    "half()": lambda m: m.half(),
    "bfloat16()": lambda m: m.bfloat16(),
    "bf16 and back to fp32": lambda m: m.to(torch.bfloat16).float(),
    "lightning bf16-true": lambda m: HalfPrecision("bf16-true").convert_module(m),  # type: ignore[return-value]
}


@pytest.mark.parametrize("cast", list(CASTS))
def test_rope_tables_of_a_cast_model_equal_the_fp32_models(cast: str) -> None:
    """cos and sin at every position up to 2,047 are bit for bit the fp32 model's, and so are the tables handed to
    bf16 activations (the fp32 tables cast once, at the end)."""
    torch.manual_seed(0)
    fp32 = CausalLM(llama2_like())
    cast_model = CASTS[cast](CausalLM(llama2_like()))
    assert cast_model.inv_freq.dtype == torch.float32
    for want, got in zip(tables(fp32), tables(cast_model), strict=True):
        assert torch.equal(got, want)
    for want, got in zip(fp32.rope(LATE, 1, torch.bfloat16), cast_model.rope(LATE, 1, torch.bfloat16), strict=True):  # type: ignore[arg-type]
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def test_fp32_rope_tables_are_the_rotary_angles() -> None:
    """The tables the cast models are compared with are right: cos/sin(p * theta^(-2j/hs)) computed in float64,
    at position 2,047 (fp32 angles of ~2,000 radians are good to ~1e-4), each frequency in both halves of a head."""
    cos, sin = tables(CausalLM(llama2_like()), LATE, 1)
    j = torch.arange(HS // 2, dtype=torch.float64)
    angle = LATE * THETA ** (-2 * j / HS)
    want_cos, want_sin = torch.cat([angle.cos()] * 2), torch.cat([angle.sin()] * 2)
    torch.testing.assert_close(cos[0].double(), want_cos, atol=1e-3, rtol=0)
    torch.testing.assert_close(sin[0].double(), want_sin, atol=1e-3, rtol=0)
    assert math.isclose(float(cos[0, 0]), math.cos(LATE), abs_tol=1e-4)  # j = 0: frequency 1


def test_rope_frequencies_survive_device_moves_state_dicts_and_to_empty() -> None:
    """The buffer is not in the state dict (non-persistent): loading a bf16 model's state into an fp32 model, or the
    reverse, leaves the frequencies fp32 and exact; `to(device)` and `to_empty` from the meta device give them back
    on the device, computed, not left empty."""
    torch.manual_seed(0)
    fp32 = CausalLM(llama2_like())
    want = tables(fp32)
    bf16 = CausalLM(llama2_like()).to(torch.bfloat16)
    assert "inv_freq" not in bf16.state_dict()
    bf16.load_state_dict(fp32.state_dict())
    fresh = CausalLM(llama2_like())
    fresh.load_state_dict(bf16.state_dict())
    moved = CausalLM(llama2_like()).to("cpu").to(device="cpu", dtype=torch.bfloat16)
    with torch.device("meta"):
        lazy = CausalLM(llama2_like())
    assert lazy.inv_freq.is_meta
    lazy = lazy.to_empty(device="cpu").to(torch.bfloat16)
    for model in (bf16, fresh, moved, lazy):
        assert model.inv_freq.dtype == torch.float32 and model.inv_freq.device.type == "cpu"
        for w, g in zip(want, tables(model), strict=True):
            assert torch.equal(g, w)


def test_bf16_logits_at_late_positions_stay_close_to_fp32() -> None:
    """A 2-layer model with Llama-2's rotary settings and sharp attention (Q and K scaled up, so that the scores
    depend on the angles): KL(fp32 || bf16) of the next-token distributions at positions 1,024-2,047 stays at the
    level of bf16 rounding (~0.005 here). With frequencies rounded to bf16 it is ~0.4, ten times the early
    positions'."""
    torch.manual_seed(0)
    fp32 = CausalLM(llama2_like()).eval()
    with torch.no_grad():
        for n, p in fp32.named_parameters():
            if n.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(3.0)
    bf16 = CausalLM(llama2_like()).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    x = torch.randint(0, 128, (1, LATE + 1))
    with torch.no_grad():
        logp = fp32(x).log_softmax(-1)
        logq = bf16(x).float().log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)[0]  # (T,)
    late = float(kl[1024:].mean())
    assert late < 0.05, f"KL(fp32 || bf16) at positions 1024-2047: {late:.3f}"
