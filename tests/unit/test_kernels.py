"""The CPU fast paths (prunelab.models.kernels) against the PyTorch ops they stand in for: the explicit attention
product against `F.scaled_dot_product_attention` in float64 (outputs and gradients), the 16-bit dropout against
its definition (rate per position, scale, gradient, reproducibility), and a bf16-autocast model against fp32."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunelab.models.kernels import (
    CE_ROWS,
    MATH_MAX_KEYS,
    Dropout,
    _blocks,
    attention,
    cpu_dropout,
    math_attention,
    rms_norm,
    soft_cap,
    token_cross_entropy,
)
from prunelab.models.transformer import Transformer, TransformerConfig


def qkv(B: int, H: int, T: int, S: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, n, 8, generator=g, dtype=dtype).requires_grad_() for n in (T, S, S)]


def key_mask(B: int, S: int) -> torch.Tensor:
    lengths = torch.tensor([S, S - 2, 1][:B])
    return (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)


@pytest.mark.parametrize(
    ("masked", "causal", "T"), [(False, False, 5), (True, False, 5), (False, True, 7), (True, True, 7)]
)
def test_math_attention_equals_sdpa_in_float64(masked: bool, causal: bool, T: int) -> None:
    B, H, S = 3, 2, 7
    mask = key_mask(B, S) if masked else None
    out = {}
    for name, fn in {"math": math_attention, "sdpa": F.scaled_dot_product_attention}.items():
        q, k, v = qkv(B, H, T, S)
        y = fn(q, k, v, mask, 0.0, causal) if name == "math" else fn(q, k, v, attn_mask=mask, is_causal=causal)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        out[name] = [y, q.grad, k.grad, v.grad]
    for a, b in zip(out["math"], out["sdpa"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_math_attention_matches_a_brute_force_softmax() -> None:
    """Independent of SDPA: every query's weights over its visible keys, one loop per (b, h, t)."""
    B, H, T, S = 2, 2, 4, 4
    q, k, v = (x.detach() for x in qkv(B, H, T, S))
    mask = key_mask(B, S)
    y = math_attention(q, k, v, mask, 0.0, True)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                seen = [s for s in range(S) if mask[b, 0, 0, s] and s <= t]
                logits = torch.tensor(
                    [float(q[b, h, t] @ k[b, h, s]) / math.sqrt(8) for s in seen], dtype=torch.float64
                )
                w = torch.exp(logits - logits.max())
                want = sum(wi / w.sum() * v[b, h, s] for wi, s in zip(w, seen, strict=True))
                torch.testing.assert_close(y[b, h, t], want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("S", [MATH_MAX_KEYS, MATH_MAX_KEYS + 1])
def test_bf16_attention_stays_close_to_float64_on_either_side_of_the_switch(S: int) -> None:
    q, k, v = (x.detach() for x in qkv(2, 2, 3, S))
    mask = key_mask(2, S)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, rtol=0.0, atol=0.03)


# --- dropout ----------------------------------------------------------------------------------------------------
def test_cpu_dropout_rate_is_p_at_every_position_of_a_64_bit_word() -> None:
    """Each 64-bit draw feeds 4 consecutive elements: each of the 4 must be dropped at rate p' (a draw of 63
    random bits, or one 16-bit value reused, would show here), and neighbours must be independent."""
    p, n = 0.1, 400_000
    drop = round(p * 65536) / 65536
    torch.manual_seed(0)
    dropped = (cpu_dropout(torch.ones(n), p) == 0).view(-1, 4).double()
    sd = math.sqrt(drop * (1 - drop) / (n // 4))
    for rate in dropped.mean(0):
        assert abs(float(rate) - drop) < 5 * sd
    both = float((dropped[:, 0] * dropped[:, 1]).mean())  # P(both dropped) = p'^2 when independent
    assert abs(both - drop**2) < 5 * math.sqrt(drop**2 / (n // 4))


def test_cpu_dropout_scales_kept_values_and_routes_the_gradient_through_them() -> None:
    p = 0.3
    scale = 65536 / (65536 - round(p * 65536))
    x = torch.randn(10_000, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    y = cpu_dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * scale, rtol=1e-15, atol=0.0)
    y.sum().backward()
    assert torch.equal(x.grad, kept.double() * scale)
    torch.manual_seed(1)
    assert torch.equal(cpu_dropout(x, p), y)  # torch.manual_seed reproduces the draw


def test_dropout_module_is_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(64, 8)
    assert torch.equal(Dropout(0.5).eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert Dropout(0.5).state_dict() == {} and isinstance(Dropout(0.5), torch.nn.Dropout)
    y = Dropout(0.5).train()(x)
    assert 0 < int((y == 0).sum()) < x.numel()


# --- a whole model under CPU autocast ---------------------------------------------------------------------------
def test_bf16_autocast_training_step_tracks_fp32() -> None:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, d_model=64, n_heads=4, d_ff=128, enc_layers=2, dec_layers=2, dropout=0.0)
    model = Transformer(cfg)
    src, tgt = torch.randint(4, 50, (8, 12)), torch.randint(4, 50, (8, 10))
    src[:3, 9:] = cfg.pad_id

    def loss_and_grads() -> tuple[float, torch.Tensor]:
        model.zero_grad()
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tgt[:, 1:].flatten())
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    l32, g32 = loss_and_grads()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l16, g16 = loss_and_grads()
    assert l16 == pytest.approx(l32, rel=0.02)
    assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.99


@pytest.mark.parametrize(("dtype", "S"), [(torch.float64, 40), (torch.bfloat16, 40), (torch.float32, 200)])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_grouped_keys_and_values_equal_one_copy_per_query_head(
    dtype: torch.dtype, S: int, softcap: float | None
) -> None:
    """K/V with one head per group of 3 consecutive query heads (SDPA's enable_gqa, or repeated for the explicit
    product): the same output and gradients as K/V copied out to every query head, causal and with a key mask."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, S, 8, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k, v = (torch.randn(2, 2, S, 8, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(2))
    mask = torch.rand(2, 1, 1, S, generator=g) > 0.2
    mask[..., 0] = True
    for kw in ({"is_causal": True}, {"mask": mask}):
        got = attention(q, k, v, softcap=softcap, **kw)
        full = [t.repeat_interleave(3, dim=1) for t in (k, v)]
        want = attention(q, *full, softcap=softcap, **kw)
        tol = {"atol": 2e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {}
        torch.testing.assert_close(got, want, **tol)
        grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
        want_grads = torch.autograd.grad(want.float().square().sum(), (q, k, v))
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, **tol)
    # a wrong grouping (query head j reading K/V head j % 2 instead of j // 3) is told apart
    wrong = attention(q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1), is_causal=True, softcap=softcap)
    assert (wrong.float() - attention(q, k, v, is_causal=True, softcap=softcap).float()).abs().max() > 0.1


# The shorter backward passes: forward the replaced ops to the bit, gradients against autograd's of those ops and, in
# float64, against finite differences (gradcheck), which know nothing of either formula.


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_cross_entropy_is_cross_entropy_across_blocks_and_its_backward_matches_autograd(
    dtype: torch.dtype,
) -> None:
    """150 rows: two whole blocks of CE_ROWS and a partial one; bf16 logits are promoted block by block, as
    F.cross_entropy(logits.float()) promotes them whole."""
    g = torch.Generator().manual_seed(0)
    N = 2 * CE_ROWS + 22
    logits = (3 * torch.randn(N, 50, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(0, 50, (N,), generator=g)
    ignored = [2, 5, CE_ROWS, N - 1]
    target[ignored] = -100  # ignored rows: zero loss, zero gradient
    upstream = torch.rand(N, generator=g)
    got = token_cross_entropy(logits, target, -100)
    want = F.cross_entropy(logits.float(), target, ignore_index=-100, reduction="none")
    assert got.grad_fn is not None and "TokenCrossEntropy" in type(got.grad_fn).__name__  # the custom backward ran
    assert got.dtype == torch.float32 and torch.equal(got, want)
    (dg,) = torch.autograd.grad(got, logits, upstream)
    (dw,) = torch.autograd.grad(want, logits, upstream)
    assert dg.dtype == dtype
    tol = dict(rtol=1e-6, atol=1e-9) if dtype == torch.float32 else dict(rtol=0.0, atol=2e-3)
    torch.testing.assert_close(dg.float(), dw.float(), **tol)
    assert torch.equal(dg[ignored].float(), torch.zeros(len(ignored), 50))
    with torch.no_grad():
        assert torch.equal(token_cross_entropy(logits, target, -100), want)
    if dtype == torch.float32:  # finite differences, which know neither formula
        x = logits.detach().double()[: CE_ROWS + 3].requires_grad_()
        assert torch.autograd.gradcheck(lambda z: token_cross_entropy(z, target[: CE_ROWS + 3], -100), (x,))


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_is_the_module_formula_and_its_backward_matches_finite_differences(offset: float) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 16, generator=g).requires_grad_()
    w = (0.1 * torch.randn(16, generator=g) + (0.0 if offset else 1.0)).requires_grad_()
    eps = 1e-6
    got = rms_norm(x, w, eps, offset)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (w + offset)
    assert torch.equal(got, want)
    upstream = torch.randn(got.shape, generator=g)
    for a, b in zip(
        torch.autograd.grad(got, (x, w), upstream), torch.autograd.grad(want, (x, w), upstream), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    x64, w64 = (t.detach().double().requires_grad_() for t in (x, w))
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, eps, offset), (x64, w64))


def test_soft_cap_is_c_tanh_x_over_c_and_leaves_a_shared_input_alone() -> None:
    x = torch.linspace(-200, 200, 101).requires_grad_()
    before = x.detach().clone()
    y = soft_cap(x, 30.0)
    assert torch.equal(y, torch.tanh(before / 30.0) * 30.0) and torch.equal(x.detach(), before)
    (dy,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(dy, 1 - torch.tanh(before / 30.0) ** 2)
    with torch.no_grad():
        z = before.clone()
        assert torch.equal(soft_cap(z, 30.0), y.detach()) and torch.equal(z, before)  # not fresh: z unchanged


def test_cross_entropy_blocks_cover_every_row_once_small_on_the_cpu_and_up_to_256_mib_elsewhere() -> None:
    for device, n, v in (("cpu", 1000, 32000), ("meta", 100_000, 32000), ("meta", 10, 8), ("meta", 5000, 10**7)):
        blocks = _blocks(torch.empty(n, v, device=device))
        assert [i for r in blocks for i in range(r.start, r.stop)] == list(range(n))
        rows = max(r.stop - r.start for r in blocks)
        if device == "cpu":
            assert rows == CE_ROWS
        else:  # as few blocks as 256 MiB of fp32 allow, never fewer rows than the CPU's
            assert rows == min(n, max(CE_ROWS, 2**28 // (4 * v)))
            assert rows == CE_ROWS or rows * v * 4 <= 2**28


def test_token_cross_entropy_of_no_rows_is_empty_as_cross_entropys() -> None:
    logits = torch.zeros(0, 7, dtype=torch.bfloat16, requires_grad=True)
    got = token_cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert got.shape == (0,) and got.dtype == torch.float32
    got.sum().backward()
    assert logits.grad is not None and logits.grad.shape == (0, 7)


def test_rms_norm_differentiates_only_what_requires_grad_at_any_rank() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(8, generator=g, dtype=torch.float64).requires_grad_()
    for shape in ((8,), (3, 8), (2, 3, 4, 8)):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, 1e-6), (x.clone().requires_grad_(), w))
        frozen = rms_norm(x, w, 1e-6)  # x frozen: only the weight's gradient, as autograd's of the formula
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
        upstream = torch.randn(shape, generator=g, dtype=torch.float64)
        (a,) = torch.autograd.grad(frozen, w, upstream)
        (b,) = torch.autograd.grad(want, w, upstream)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
