"""Fast paths the Transformer takes on the CPU (under bf16/fp16 autocast, in training, for its losses), each exact to
its own definition (tests/unit/test_kernels.py checks them against the PyTorch ops they replace).

Profiled on a 2-core AMD EPYC (avx512_bf16), transformer_base, 4096 tokens/batch, bf16-mixed (torch 2.13):
- `F.scaled_dot_product_attention` in bf16 takes the CPU flash kernel, whose backward ran about 6x slower than
  the fp32 one (26% of a step). For the short keys of sentence-level work the plain product q k^T, softmax, @ v
  runs its two matmuls on the bf16 units and wins (8 ms against 34 ms at 32 keys, 17 against 44 at 128); at
  256 keys and more the flash kernel's memory traffic wins back, so longer keys keep it.
- `nn.Dropout` draws one Bernoulli number per element (`bernoulli_`): 22% of the bf16 step (11% in fp32).
  `Dropout` here draws 64 random bits per call and uses them as four 16-bit uniforms: 2.8x faster on the
  CPU, and p is rounded to a multiple of 1/65536 (0.1 -> 0.1000061), with the kept values scaled by the exact
  1/(1 - p) of that rounded p. Accelerators keep PyTorch's fused dropout.

Two losses and a norm with fewer full-size temporaries, their forward the very ops they replace (bit-equal outputs;
gradients equal to the last few ulps). On the CPU a fresh tensor of 100+ MB is memory the kernel must map and zero
again, so what is never made whole costs nothing of that. `python bench/run.py --sections causal_lm` times each
against the torch ops (causal_lm.kernels, fresh inputs, 2 cores): the loss of 1,020 x 32,000 fp32 logits 1.33x
faster without gradients and 1.16x with them, RMSNorm over 1,020 x 768 1.41x (`bench/RESULTS_causal_lm.md`).
- `token_cross_entropy`: `F.cross_entropy(reduction="none")` makes the log-probabilities whole, and its backward a
  one-hot gradient of the logits' size, then a second full tensor for log_softmax's backward. A block of 64 rows at
  a time, its log-probabilities stay in the cache; the backward (softmax - one-hot, times each row's gradient)
  writes the one gradient tensor block by block.
- `rms_norm`: autograd's backward of x * rsqrt(mean(x^2) + eps) * w walks the chain op by op, a full-size
  temporary for most steps; the closed form dx = r (g w - x^ mean(g w x^)) needs fewer (F.rms_norm in torch 2.13
  is the same chain as the module's formula: the same gradients).
- `soft_cap`: Gemma 2's c tanh(x / c), in place where autograd allows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MATH_MAX_KEYS = 128  # keys up to which the explicit product beats the flash kernel in bf16 on the CPU


def wide(x: Tensor) -> Tensor:
    """x in float32 at least (bf16/fp16 up; float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
    # scores is a new tensor here and none of the steps below needs its input for the backward, so each runs in place
    scores = wide(scores).mul_(scale)  # float64 stays
    if softcap is not None:
        scores = soft_cap(scores, softcap, fresh=True)
    if mask is not None and mask.is_floating_point():
        scores = scores.add_(mask.to(scores.dtype))
        mask = None
    if is_causal:  # SDPA's convention: query t sees keys 0..t (top-left aligned)
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        mask = causal if mask is None else mask & causal
    if mask is not None:
        scores = scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
    p = scores.softmax(-1).to(v.dtype)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p, training=True)
    return p @ v  # (B, H, T, hs)


def soft_cap(x: Tensor, c: float, fresh: bool = False) -> Tensor:
    """c * tanh(x / c) (Gemma 2's soft-capping of attention logits and of the output logits), the same ops in the same
    order; `fresh`: x is a temporary the caller will not read again and no backward needs, so x / c is taken in place.
    tanh runs in place on x / c, and the final product too unless autograd keeps tanh's output for its backward."""
    y = x.div_(c) if fresh else x / c
    y = y.tanh_()
    return y * c if torch.is_grad_enabled() and y.requires_grad else y.mul_(c)


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


# the cross-entropy's blocks of rows: 64 on the CPU (a block's log-probabilities stay in the cache); on an accelerator,
# fp32 blocks of up to 256 MiB (few kernel launches, and still no whole log-probabilities)
CE_ROWS = 64
CE_BLOCK_BYTES = 2**28


def _blocks(logits: Tensor) -> list[slice]:
    n, v = logits.shape
    rows = CE_ROWS if logits.device.type == "cpu" else max(CE_ROWS, CE_BLOCK_BYTES // (4 * max(v, 1)))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)]


def _block_nll(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """F.cross_entropy(reduction="none") of `logits` (N, V) in blocks of rows (`_blocks`), each promoted to fp32 at
    least on its own: the kernel computes every row alone, so the blocks give the whole call's values to the bit."""
    if len(target) == 0:  # no rows, no blocks: F.cross_entropy's empty answer
        return wide(logits).new_zeros(0)
    return torch.cat(
        [
            F.cross_entropy(wide(logits[r]), target[r], ignore_index=ignore_index, reduction="none")
            for r in _blocks(logits)
        ]
    )


class _TokenCrossEntropy(torch.autograd.Function):
    """The NLL of each row's target -> (N,), 0 where ignored, with nothing of the logits' size saved but the logits
    themselves: the backward recomputes each block's log-probabilities."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
        ctx.ignore_index = ignore_index
        ctx.save_for_backward(logits, target)
        return _block_nll(logits, target, ignore_index)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        logits, target = ctx.saved_tensors
        keep = target != ctx.ignore_index
        rows = torch.where(keep, target, 0)  # (N,): an ignored row's gradient is zeroed by g below
        g = wide(g.masked_fill(~keep, 0.0)[:, None])  # (N, 1)
        grad = torch.empty_like(logits)
        blocks = _blocks(logits)
        within = torch.arange(blocks[0].stop - blocks[0].start if blocks else 0, device=logits.device)
        for r in blocks:  # d nll_i / d logits_ij = softmax_ij - [j = target_i], times g_i
            block = F.log_softmax(wide(logits[r]), -1).exp_().mul_(g[r])
            # one target per row: an index_put without accumulation, deterministic on every device
            block[within[: len(block)], rows[r]] -= g[r, 0]
            grad[r] = block
        return grad, None, None


def token_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """The negative log-likelihood of each row's target, logits (N, V) and targets (N,) -> (N,) in fp32 at least, 0
    where the target is `ignore_index`: F.cross_entropy(logits promoted to fp32, reduction="none") to the bit, computed
    a block of rows at a time. Neither the log-probabilities nor an fp32 copy of bf16 logits is ever whole. While the
    logits are differentiated, autograd keeps them (F.cross_entropy keeps log-probabilities of the same size) and
    `_TokenCrossEntropy`'s backward writes the gradient a block at a time."""
    if torch.is_grad_enabled() and logits.requires_grad:
        return _TokenCrossEntropy.apply(logits, target, ignore_index)
    return _block_nll(logits, target, ignore_index)


def _rms_factors(x: Tensor, weight: Tensor, eps: float, offset: float) -> tuple[Tensor, Tensor]:
    """(1 / sqrt(mean(x^2) + eps) over the last dimension (..., 1), the scale offset + weight)."""
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps), (weight + offset if offset else weight)


class _RMSNorm(torch.autograd.Function):
    """x * rsqrt(mean(x^2) + eps) * scale over the last dimension, fp32; the backward in closed form. `offset`: the
    scale is offset + weight (Gemma's 1 + w)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, eps: float, offset: float) -> Tensor:
        r, scale = _rms_factors(x, weight, eps, offset)
        ctx.save_for_backward(x, r, scale)
        return x * r * scale

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, r, scale = ctx.saved_tensors
        xhat = x * r
        dw = (g * xhat).reshape(-1, x.size(-1)).sum(0) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:  # d/dx of x r: r (gs - xhat mean(gs xhat)), as dr/dx = -r^3 x / n
            gs = g * scale
            dx = (gs - xhat * (gs * xhat).mean(-1, keepdim=True)).mul_(r)
        return dx, dw, None, None


def rms_norm(x: Tensor, weight: Tensor, eps: float, offset: float = 0.0) -> Tensor:
    """x / sqrt(mean(x^2) + eps) * (offset + weight), as the RMSNorm module computes it for fp32 inputs and weights
    (the same ops in the same order: bit-equal), with `_RMSNorm`'s closed-form backward while differentiated."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _RMSNorm.apply(x, weight, eps, offset)
    r, scale = _rms_factors(x, weight, eps, offset)
    return x * r * scale
