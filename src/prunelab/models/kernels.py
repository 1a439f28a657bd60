"""Two CPU fast paths the Transformer takes under bf16/fp16 autocast and in training, each exact to its own
definition (tests/unit/test_kernels.py checks them against the PyTorch ops they replace).

Profiled on a 2-core AMD EPYC (avx512_bf16), transformer_base, 4096 tokens/batch, bf16-mixed (torch 2.13):
- `F.scaled_dot_product_attention` in bf16 takes the CPU flash kernel, whose backward ran about 6x slower than
  the fp32 one (26% of a step). For the short keys of sentence-level work the plain product q k^T, softmax, @ v
  runs its two matmuls on the bf16 units and wins (8 ms against 34 ms at 32 keys, 17 against 44 at 128); at
  256 keys and more the flash kernel's memory traffic wins back, so longer keys keep it.
- `nn.Dropout` draws one Bernoulli number per element (`bernoulli_`): 22% of the bf16 step (11% in fp32).
  `Dropout` here draws 64 random bits per call and uses them as four 16-bit uniforms: 2.8x faster on the
  CPU, and p is rounded to a multiple of 1/65536 (0.1 -> 0.1000061), with the kept values scaled by the exact
  1/(1 - p) of that rounded p. Accelerators keep PyTorch's fused dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MATH_MAX_KEYS = 128  # keys up to which the explicit product beats the flash kernel in bf16 on the CPU


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
) -> Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p, is_causal, scale)`; q (B, H, T, hs),
    k and v (B, H, S, hs), or (B, KV, S, hs) under grouped-query attention (query head j reads K/V head
    j // (H / KV), SDPA's enable_gqa); mask bool broadcastable to (B, H, T, S), True where a key may be seen, or a
    float mask added to the scaled logits (a position bias); scale None: 1/sqrt(hs). In bf16/fp16 on the CPU with at
    most MATH_MAX_KEYS keys, and with a `softcap` (SDPA has none), the explicit product (`math_attention`)."""
    low = q.dtype in (torch.bfloat16, torch.float16)
    groups = q.size(-3) != k.size(-3)
    if softcap is not None or (q.device.type == "cpu" and low and k.size(-2) <= MATH_MAX_KEYS):
        if groups:  # one K/V head per query head, each group's repeated for its consecutive query heads
            k, v = (t.repeat_interleave(q.size(-3) // t.size(-3), dim=-3) for t in (k, v))
        return math_attention(q, k, v, mask, dropout_p, is_causal, scale, softcap)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=groups
    )


def math_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
) -> Tensor:
    """softmax(q k^T * scale + masked) v (scale None: 1/sqrt(hs)) with the matmuls in the inputs' dtype and the
    softmax in fp32 (at least); a float mask is added to the scaled logits. softcap c (Gemma 2): the scaled logits
    become c * tanh(logits / c) before the mask, as transformers' eager Gemma 2 attention. A query that may see no
    key gets the mean of all values (SDPA's flash kernel gives 0 or NaN there; prunelab never builds such rows:
    every sentence has a token, and padding queries see their sentence)."""
    T, S = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-1, -2)  # (B, H, T, S)
    scale = q.size(-1) ** -0.5 if scale is None else scale
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scale  # float64 stays
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None and mask.is_floating_point():
        scores = scores + mask.to(scores.dtype)
        mask = None
    if is_causal:  # SDPA's convention: query t sees keys 0..t (top-left aligned)
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    p = scores.softmax(-1).to(v.dtype)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p, training=True)
    return p @ v  # (B, H, T, hs)


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, same state dict: none) with a faster draw on the CPU; see the module docstring."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p >= 1.0 or self.inplace:
            return F.dropout(x, self.p, True, self.inplace)
        return cpu_dropout(x, self.p)


def cpu_dropout(x: Tensor, p: float) -> Tensor:
    """Zero each element with probability p' = round(p * 65536) / 65536 and scale the rest by 1 / (1 - p'):
    one 64-bit draw (torch's CPU generator, so `torch.manual_seed` reproduces it) gives four 16-bit uniforms."""
    drop = round(p * 65536)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    u16 = words.view(torch.int16)[:n].view(x.shape)  # uniform on [-32768, 32767]
    keep = u16 >= drop - 32768  # P(keep) = (65536 - drop) / 65536
    return x * keep.to(x.dtype) * (65536 / (65536 - drop))
