"""Position encodings of the Transformer (prunelab.models.transformer), each as its source defines it: the fixed
sinusoid tables (Vaswani et al.; Marian's split layout; fairseq's, M2M100/NLLB), T5's relative position buckets
(Raffel et al. 2020), and rotary positions (Su et al. 2021) with the checkpoints' frequency scalings and partial
rotation. Pure functions of positions and sizes: no module state."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

ROPE_TYPES = ("default", "linear", "llama3")
POS_LAYOUTS = ("interleaved", "split", "fairseq")


def rope_frequencies(hs: int, theta: float, scaling: dict[str, Any] | None) -> Tensor:
    """The rotary frequencies (hs/2,): theta^(-2j/hs), j < hs/2 (Su et al. 2021), then the checkpoint's
    `rope_scaling`: linear (all divided by `factor`, i.e. positions divided by it) or llama3 (Llama 3.1's: long
    wavelengths divided by `factor`, short ones kept, a smooth blend between)."""
    inv = 1.0 / (theta ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))
    scaling = scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return torch.where(medium, blended, scaled)
    return inv


def rope_tables(inv_freq: Tensor, offset: int, T: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin (T, hs) for positions offset .. offset+T-1, each frequency twice (the two halves of a head),
    computed in fp32 and cast to the activations' dtype."""
    pos = torch.arange(offset, offset + T, device=inv_freq.device, dtype=torch.float32)
    angles = pos[:, None] * inv_freq.float()[None, :]  # (T, hs/2)
    emb = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotary positions on x (B, h, T, hs): the feature pairs (i, i + r/2) rotated by their position's angles
    (the half-split layout of GPT-NeoX and of Hugging Face's Llama checkpoints, not adjacent pairs), r the tables'
    width: all hs features, or (partial rotary) the first r of them, the others passed on as they are."""
    cos, sin = rope
    r = cos.size(-1)
    if r < x.size(-1):
        return torch.cat([rotate(x[..., :r], rope), x[..., r:]], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def sinusoidal_positions(max_len: int, d: int, layout: str = "interleaved", pad_row: int | None = None) -> Tensor:
    """The fixed position table (max_len, d): sin(pos * f_j) and cos(pos * f_j), f_j = 10000^(-2j/d), j < d/2.
    interleaved: sin in the even columns, cos in the odd ones (Vaswani et al.); split: sin in the first d/2 columns,
    cos in the last d/2 (Marian, HF MarianSinusoidalPositionalEmbedding), computed in float64 as HF does; fairseq:
    split, with f_j = 10000^(-j/(d/2 - 1)) in float32 and a zero last column for an odd d (tensor2tensor's table, as
    fairseq and M2M100/NLLB use it). `pad_row`: a row held at zero (fairseq's padding position)."""
    if layout == "fairseq":
        half = d // 2
        freq = torch.exp(torch.arange(half, dtype=torch.int64).float() * -(math.log(10000) / (half - 1)))  # (d/2,)
        angle = torch.arange(max_len, dtype=torch.int64).float().unsqueeze(1) * freq.unsqueeze(0)  # (L, d/2)
        pe = torch.cat([torch.sin(angle), torch.cos(angle), torch.zeros(max_len, d % 2)], dim=1)  # (L, d)
        if pad_row is not None:
            pe[pad_row] = 0.0
        return pe
    if layout == "split":
        pos64 = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (L, 1)
        angle = pos64 / torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)  # (L, d/2)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).float()  # (L, d)
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))  # (d/2,)
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return pe  # (L, d)


def relative_buckets(rel: Tensor, bidirectional: bool, buckets: int, max_distance: int) -> Tensor:
    """T5's bucket of each relative position rel = key position - query position (Raffel et al. 2020, 2.1; the
    Mesh TensorFlow definition): bidirectional (the encoder) gives half the buckets to keys after the query; the
    causal decoder only looks back, so every key after the query falls in bucket 0 with distance 0. Of a side's n
    buckets, distances 0 .. n/2-1 get one each, longer ones share n/2 buckets logarithmically up to max_distance,
    and every farther distance the last one."""
    out = torch.zeros_like(rel)
    if bidirectional:
        buckets //= 2
        out = out + (rel > 0).long() * buckets
        dist = rel.abs()
    else:
        dist = (-rel).clamp(min=0)
    exact = buckets // 2
    far = (
        exact + (torch.log(dist.float() / exact) / math.log(max_distance / exact) * (buckets - exact)).long()
    )  # the float is truncated toward zero, as T5's int cast; dist < exact never reads it (log 0 = -inf)
    far = far.clamp(max=buckets - 1)
    return out + torch.where(dist < exact, dist, far)
