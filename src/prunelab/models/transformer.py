"""An encoder-decoder Transformer (Vaswani et al. 2017), written to be read in one sitting.

Every sub-layer is addressable by its module path, which is also the address the pruning and
importance code uses:

    enc.{i}.sa   encoder self-attention          (E:SA in Wang & Tu 2020)
    enc.{i}.ff   encoder feed-forward            (E:FF)
    dec.{i}.sa   decoder self-attention          (D:SA)
    dec.{i}.ea   decoder encoder-attention       (D:EA)
    dec.{i}.ff   decoder feed-forward            (D:FF)
    <attn>.h{j}  head j of an attention sub-layer (Michel et al. 2019), e.g. dec.5.ea.h3

Each sub-layer owns a scalar `gate` buffer that scales its output before the residual add, and each
attention sub-layer owns a `head_gate` buffer of shape (H,) that scales every head's output before
the output projection. Gates default to 1; multiplying by 1.0 is exact in IEEE arithmetic, so a
model with all gates at 1 computes bit-identical outputs to one without gates.
Gates are buffers, not parameters: the optimizer never sees them, but `requires_grad_()` on a gate
gives dL/d(gate), which is what head importance needs.

The config's defaults are the 2017 model; its other options (LayerNorm eps, GELU, learned positions, token
types, an embedding LayerNorm, no embedding scale) are what pretrained encoders such as BERT need, see
prunelab.hf.encoders; `pos_layout="split"`, `logit_bias`, `decoder_start_id` and `ban_pad` are what MarianMT
needs, see prunelab.hf.marian; rotary positions, RMSNorm, gated (SwiGLU) feed-forwards, grouped-query attention and
the bias switches are what decoder-only language models need (Llama, Mistral, Qwen), see prunelab.models.causal_lm
and prunelab.hf.causal_lm. The position encodings themselves (sinusoids, T5's buckets, rotary) are in
prunelab.models.positions.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from prunelab.models.kernels import (
    Dropout,
    attention,
    rms_norm,
    soft_cap,
    token_cross_entropy,
)  # CPU fast paths: exact to their definitions
from prunelab.models.positions import (
    POS_LAYOUTS,
    ROPE_TYPES,
    relative_buckets,
    rotate,
    sinusoidal_positions,
)

# A decoder-side key/value cache: one dict per decoder layer holding "sa_k", "sa_v" (grown by one
# position per step) and "ea_k", "ea_v" (the projected encoder memory, computed once).
Cache = list[dict[str, Tensor]]

# Feed-forward non-linearities by config name. "gelu" is the exact (erf) GELU of BERT's `hidden_act="gelu"`;
# "gelu_tanh" is the tanh approximation (HF `gelu_new`, `gelu_pytorch_tanh`): they differ by up to 5e-4, which
# a parity test notices, so the two are kept apart.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}
POSITIONS = ("sinusoidal", "learned", "rope", "relative")
NORMS = ("layer", "rms", "gemma_rms")
FFNS = ("mlp", "glu")


@dataclass
class TransformerConfig:
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    enc_layers: int = 6
    dec_layers: int = 6
    dropout: float = 0.1
    attn_dropout: float = 0.0
    pre_norm: bool = True  # pre-norm (x + f(LN(x))) trains more stably; post-norm is the 2017 original
    max_len: int = 1024
    pad_id: int = 0
    gated: bool = True  # False skips every gate multiply (used to check that gates at 1 are a no-op)
    layerdrop: float = 0.0  # LayerDrop (Fan et al. 2020): in training, each sub-layer is skipped with this chance
    enc_layerdrop: float = 0.0  # fairseq's and transformers' LayerDrop: in training, each whole encoder layer skipped
    dec_layerdrop: float = 0.0  # with this chance (encoder_layerdrop / decoder_layerdrop of BART, M2M100, Marian)
    removed: tuple[str, ...] = ()  # components built without parameters, e.g. ("enc.0.ff", "dec.1.sa")
    # Options for imported checkpoints (prunelab.hf.encoders); the defaults are the 2017 model as above.
    norm_eps: float = 1e-5  # every LayerNorm's epsilon (BERT: 1e-12)
    activation: str = "relu"  # feed-forward non-linearity, a key of ACTIVATIONS (BERT: gelu, exact erf)
    activation_dropout: float | None = None  # dropout between fc1 and fc2; None: `dropout` (BERT has none: 0)
    embed_scale: bool = True  # token embeddings x sqrt(d_model), as Vaswani et al. (BERT: no scaling)
    positions: str = "sinusoidal"  # sinusoidal (a fixed table) | learned (`pos_embed`, max_len rows, BERT)
    position_offset: int = 0  # 0: positions 0, 1, 2, ...; k > 0: RoBERTa's, see Transformer.position_ids
    type_vocab_size: int = 0  # >0: a `type_embed` table of token types (BERT's segments A/B) added to the input
    embed_norm: bool = False  # a LayerNorm on the summed embeddings, before their dropout (BERT)
    embed_dim: int | None = None  # embedding width if not d_model (ELECTRA-small: 128), then `embed_proj` to d_model
    # Options for imported translation models (prunelab.hf.marian); the defaults are again the 2017 model.
    pos_layout: str = "interleaved"  # sinusoids: sin/cos interleaved (2017) | split: sin in the first half, cos after
    logit_bias: bool = False  # a `logit_bias` buffer (V,) added to the output logits (Marian's final_logits_bias)
    decoder_start_id: int | None = None  # the decoder's first input; None: the caller's BOS (Marian: its pad id)
    ban_pad: bool = False  # decoding never emits pad (its score is -inf), as HF's bad_words_ids=[[pad]] for Marian
    # Options for decoder-only language models (prunelab.hf.causal_lm); the defaults are again the 2017 model.
    n_kv_heads: int | None = None  # grouped-query attention: n_kv_heads key/value heads, each shared by a group of
    #                                n_heads / n_kv_heads consecutive query heads (Ainslie et al. 2023); None: n_heads
    head_dim: int | None = None  # per-head width; None: d_model // n_heads (Qwen3 sets its own)
    norm: str = "layer"  # layer (LayerNorm) | rms (RMSNorm, Zhang & Sennrich 2019: no mean, no bias; Llama)
    ffn: str = "mlp"  # mlp: fc2(act(fc1 x)) | glu: fc2(act(fc1 x) * fc3 x) (SwiGLU with silu, Shazeer 2020; Llama)
    qkv_bias: bool = True  # biases of the Q/K/V projections (Llama: none; Qwen2: these only)
    out_bias: bool = True  # bias of the attention output projection
    ff_bias: bool = True  # biases of the feed-forward Linears
    qk_norm: bool = False  # an RMSNorm over each head's queries and keys before the rotation (Qwen3)
    rope_theta: float = 10000.0  # positions="rope": the rotary base (Su et al. 2021), the checkpoint's rope_theta
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": linear | llama3, "factor": ..., ...} as config.json
    tie_embeddings: bool = True  # the output projection is the token embedding (False: a separate `lm_head`)
    # the original number of each layer of a stack, {"enc": (0, 2, 3), ...}, for a model imported from a Hugging Face
    # export that took whole layers out and renumbered the rest (config.json's prunelab_kept_layers); a stack not in
    # it (or None): each layer's index is its number, as prunelab never renumbers a stack (models.surgery.layer_numbers)
    layer_numbers: dict[str, tuple[int, ...]] | None = None
    # Options for the other pretrained encoder-decoders (prunelab.hf.t5, .bart, .m2m100); defaults: the 2017 model.
    attn_scale: float | None = None  # the attention logits' scale; None: 1/sqrt(hs) (T5: 1.0, its init absorbs it)
    rel_buckets: int = 32  # positions="relative" (T5): buckets of the relative position bias (one table per stack)
    rel_max_distance: int = 128  # distances from which on the relative bias has one bucket (T5's max_distance)
    position_shift: int = 0  # learned positions: position p reads row p + shift of the table (BART, mBART: 2)
    stack_embeddings: bool = False  # the decoder has its own position table and embedding LayerNorm (BART, mBART)
    logit_scale: float = 1.0  # the final hidden states are scaled by this before the output projection (T5: d^-0.5)
    # OPT-350M: the embed_dim-wide token embedding is projected to d_model first (`embed_proj`, no bias; positions are
    # then added in d_model) and the final states back to embed_dim (`head_proj`, no bias) for the tied output
    project_first: bool = False
    # Options for more decoder-only families (prunelab.hf.gpt_neox): the attention and the feed-forward both read the
    # layer's input, x + attn(LN1 x) + ff(LN2 x) (GPT-NeoX / Pythia's use_parallel_residual), and rotary positions on
    # only the first `rotary_dims` features of each head (Pythia: a quarter; None: all of them)
    parallel_residual: bool = False
    rotary_dims: int | None = None
    # sliding-window attention (Mistral, Qwen2's use_sliding_window): query i sees keys i-W+1 .. i in the layers of
    # `window_layers` (None: every layer) of a decoder-only model
    sliding_window: int | None = None
    window_layers: tuple[int, ...] | None = None
    # Options for Phi and Gemma (prunelab.hf.phi, prunelab.hf.gemma); the defaults leave every other model as it was.
    shared_norm: bool = False  # parallel_residual with one norm both sub-layers read: x + attn(LN x) + ff(LN x) (Phi)
    lm_head_bias: bool = False  # the separate output projection has a bias (Phi-1/1.5/2)
    sandwich_norm: bool = False  # each sub-layer's output normed too, x + LN'(f(LN x)), LN' its `post_norm` (Gemma 2/3)
    attn_softcap: float | None = None  # attention logits -> c * tanh(logits / c) before the mask (Gemma 2)
    logit_softcap: float | None = None  # output logits -> c * tanh(logits / c) (Gemma 2's final_logit_softcapping)
    local_rope_theta: float | None = None  # the rotary base of the sliding-window layers, unscaled (Gemma 3's local)

    def __post_init__(self) -> None:
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.ffn not in FFNS:
            raise ValueError(f"ffn must be one of {FFNS}, got {self.ffn!r}")
        rope_type = (self.rope_scaling or {}).get("rope_type", (self.rope_scaling or {}).get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_scaling type must be one of {ROPE_TYPES}, got {rope_type!r}")
        if self.positions == "rope" and self.rotary_width % 2:
            raise ValueError(f"rotary positions need an even rotated width, got {self.rotary_width}")
        if self.rotary_dims is not None and not 0 < self.rotary_dims <= self.hs:
            raise ValueError(f"rotary_dims={self.rotary_dims} must be in (0, head width {self.hs}]")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.pos_layout not in POS_LAYOUTS:
            raise ValueError(f"pos_layout must be one of {POS_LAYOUTS}, got {self.pos_layout!r}")
        if self.pos_layout == "split" and (self.embed_dim or self.d_model) % 2:
            raise ValueError("pos_layout='split' needs an even embedding width")
        if self.positions == "learned" and self.position_shift >= self.max_len:
            raise ValueError("position_shift leaves no row of the learned position table")
        if self.position_offset < 0 or self.type_vocab_size < 0 or self.position_shift < 0:
            raise ValueError("position_offset, position_shift and type_vocab_size must be >= 0")
        if self.position_offset and self.position_shift:
            raise ValueError("position_offset (per-sentence numbering) and position_shift (fixed) exclude each other")
        if self.positions == "relative" and (self.rel_buckets < 4 or self.rel_max_distance <= self.rel_buckets // 2):
            raise ValueError("relative positions need rel_buckets >= 4 and rel_max_distance > rel_buckets / 2")
        if self.embed_dim not in (None, self.d_model) and self.dec_layers and not self.project_first:
            raise ValueError(
                "embed_dim != d_model needs dec_layers=0 or project_first: the output projection is the tied embedding"
            )
        for name in ("layerdrop", "enc_layerdrop", "dec_layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        self.removed = tuple(self.removed)
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if self.window_layers is not None:
            self.window_layers = tuple(int(i) for i in self.window_layers)
        if self.shared_norm and not self.parallel_residual:
            raise ValueError("shared_norm is the parallel layer's one norm: it needs parallel_residual")
        if self.sandwich_norm and (self.parallel_residual or not self.pre_norm):
            raise ValueError("sandwich_norm (a norm on each sub-layer's output) needs a sequential pre-norm layer")
        for name in ("attn_softcap", "logit_softcap"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.local_rope_theta is not None and (self.positions != "rope" or self.sliding_window is None):
            raise ValueError("local_rope_theta is the sliding-window layers' rotary base: it needs rope and a window")
        if self.layer_numbers is not None:
            self.layer_numbers = {side: tuple(int(i) for i in ids) for side, ids in self.layer_numbers.items()}

    @property
    def hs(self) -> int:
        """The width of one head."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def rotary_width(self) -> int:
        """The features of each head that rotary positions rotate (the rest pass through)."""
        return self.rotary_dims or self.hs

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


def uniform_attention(v: Tensor, mask: Tensor | None, is_causal: bool, T: int) -> Tensor:
    """Attention with the constant map 1/n over the n keys each query may see: v (B, H, S, hs) -> (B, H, T, hs),
    or (B, H, 1, hs) when every query sees the same keys (no causal mask, key mask per sentence)."""
    S = v.size(2)
    if mask is not None and mask.is_floating_point():  # an additive mask with a position bias: where it allows a key
        mask = (mask > torch.finfo(mask.dtype).min / 2)[:, :1]
    if is_causal:  # query t sees keys 0..t
        w = torch.tril(torch.ones(T, S, dtype=v.dtype, device=v.device))[None, None]
    else:
        w = (mask if mask is not None else torch.ones(1, 1, 1, S, dtype=torch.bool, device=v.device)).to(v.dtype)
    w = w / w.sum(-1, keepdim=True).clamp(min=1.0)  # (B|1, 1, T|1, S)
    if w.size(2) == 1:  # every query has the same map: the masked mean of the values, (B, H, 1, hs)
        return (v * w.transpose(-1, -2)).sum(2, keepdim=True)
    return w @ v  # (B, H, T, hs)


def all_ones(g: Tensor) -> bool:
    """True when multiplying by the gates `g` is the identity and may be skipped (bit-identical, as x * 1.0 == x):
    every gate is 1 and none is being differentiated (importance needs dL/dg). Checked on the CPU only, where
    reading a few gate values costs microseconds against a pass over the activations; on an accelerator the read
    would stall the queue, so the multiply stays."""
    return g.device.type == "cpu" and not g.requires_grad and bool(torch.all(g == 1.0))


def gated(y: Tensor, g: Tensor) -> Tensor:
    """y * g, for a scalar gate or one gate per example (g of shape (B,), y of shape (B, ...))."""
    if all_ones(g):
        return y
    return y * g if g.dim() == 0 else y * g.view(-1, *([1] * (y.dim() - 1)))


@torch.no_grad()
def _sliced_linear(old: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A copy of `old` keeping only the output `rows` (with their biases) or only the input `cols` (all biases);
    either may end up empty once all heads or neurons are gone."""
    w = old.weight if rows is None else old.weight[rows]
    w = w if cols is None else w[:, cols]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        new = skip_init(
            nn.Linear, w.shape[1], w.shape[0], bias=old.bias is not None, device=w.device, dtype=w.dtype
        )  # the weights are copied in: no init needed
    new.weight.copy_(w)
    if old.bias is not None:
        new.bias.copy_(old.bias if rows is None else old.bias[rows])
    return new


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight (Zhang & Sennrich 2019), computed in fp32 and cast back before the
    weight, as Llama's reference code and transformers' LlamaRMSNorm do (bf16 inputs round the same way).
    unit_offset (Gemma): the scale is 1 + weight (the weight starts at 0), multiplied in fp32 before the cast back,
    as GemmaRMSNorm does."""

    def __init__(self, dim: int, eps: float = 1e-6, unit_offset: bool = False):
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight) if self.unit_offset else nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # the same ops, a shorter backward
            return rms_norm(x, self.weight, self.eps, 1.0 if self.unit_offset else 0.0)
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (y * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * y.to(x.dtype)


def make_norm(cfg: TransformerConfig, dim: int) -> nn.Module:
    """The config's normalisation layer over `dim` features: LayerNorm, RMSNorm or Gemma's (1 + w) RMSNorm."""
    if cfg.norm == "layer":
        return nn.LayerNorm(dim, eps=cfg.norm_eps)
    return RMSNorm(dim, cfg.norm_eps, unit_offset=cfg.norm == "gemma_rms")


class MultiHeadAttention(nn.Module):
    """Separate Q/K/V/O projections so that heads can later be removed by slicing rows/columns.

    Under grouped-query attention (n_kv_heads < n_heads) the K/V projections have one head per group: query head
    j reads group `head_groups[j]` (originally j // (n_heads / n_kv_heads)), and `kv_ids` lists the groups left.
    Removing a query head leaves its group unless it was the group's last; removing a group removes its heads."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = hs = cfg.hs
        self.gated = cfg.gated
        self.attn_dropout = cfg.attn_dropout
        self.scale = cfg.attn_scale  # None: 1/sqrt(hs)
        self.softcap = cfg.attn_softcap  # Gemma 2: c * tanh(logits / c)
        H, KV = cfg.n_heads, cfg.kv_heads
        self.q_proj = nn.Linear(cfg.d_model, H * hs, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, KV * hs, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, KV * hs, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(H * hs, cfg.d_model, bias=cfg.out_bias)
        # Gemma 2/3 (sandwich_norm): a norm on the output, inside the sub-layer, so that the component gate scales
        # what reaches the residual stream (a gate before an RMSNorm would be divided out again)
        self.post_norm = make_norm(cfg, cfg.d_model) if cfg.sandwich_norm else None
        # a norm of the model's kind over each head's queries and keys (weights shared by the heads), before the
        # rotation: Qwen3's RMSNorm, Gemma 3's (1 + w) one, Phi's qk_layernorm LayerNorm
        self.q_norm = make_norm(cfg, hs) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, hs) if cfg.qk_norm else None
        self.register_buffer("gate", torch.ones(()))
        self.register_buffer("head_gate", torch.ones(cfg.n_heads))
        self.register_buffer("head_ids", torch.arange(cfg.n_heads))  # original numbers of the heads left
        self.grouped = KV != H
        if self.grouped:  # only then: the keys of every other model stay what they were
            self.register_buffer("kv_ids", torch.arange(KV))  # original numbers of the K/V groups left
            self.register_buffer("head_groups", torch.arange(H) // (H // KV))  # each query head's group
        self.even_groups = True  # every K/V group still has the same number of query heads, side by side
        self.uniform = False  # structurally pruned attention (AttendOut): a constant 1/n map, no Q or K

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, hs), or (B, KV, T, hs) for K and V

    def group_index(self) -> Tensor:
        """For each query head, the position of its group among the K/V heads left, (H,)."""
        return torch.searchsorted(self.kv_ids, self.head_groups)

    def expand_kv(self, x: Tensor) -> Tensor:
        """K or V with one head per group (B, KV, S, hs) -> one per query head (B, H, S, hs). Groups of equal size
        are broadcast and reshaped (its gradient is a sum, not index_select's scatter); uneven ones, after head
        removal, are gathered."""
        if not self.grouped:
            return x
        B, KV, S, hs = x.shape
        if self.even_groups and KV and self.n_heads % KV == 0:
            return x[:, :, None].expand(B, KV, self.n_heads // KV, S, hs).reshape(B, self.n_heads, S, hs)
        return x.index_select(1, self.group_index())

    def forward(
        self,
        x: Tensor,
        k: Tensor | None,
        v: Tensor,
        mask: Tensor | None = None,
        is_causal: bool = False,
        map_keep: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """x: queries (B, T, C); k, v: already projected and split (B, H, S, hs), or (B/G, H, S, hs) when
        G consecutive query rows share their keys (the beams of one sentence attending to its encoder output).
        mask: bool (B or B/G, 1, 1|T, S), True where a key may be attended to; or additive (B|1, H, T, S), the
        key mask as finfo.min plus a position bias per head (T5), H the heads the model was built with.
        map_keep: AttendOut's decision for this attention map, a scalar or one value per example (B,): it scales
        the attention logits, so 0 drops the map (every logit equal: the constant map 1/n) and 1 keeps it. rope:
        the rotary cos/sin tables (T, hs) of the queries' positions (the keys were rotated by project_kv)."""
        B, T, _ = x.shape
        if self.n_heads == 0:  # every head removed: only out_proj's bias is left, as when all are gated off
            return self._output(self.out_proj(x.new_zeros(B, T, 0)))
        # grouped-query attention with even groups keeps one K/V head per group (no G-fold copy): the attention kernel
        # takes the groups (SDPA's enable_gqa), and one new position (decoding with a cache) attends with each group's
        # G query heads as G query rows of its one K/V head
        native = self.grouped and self.even_groups and not self.uniform and k is not None and k.size(0) == B
        step = native and T == 1 and (mask is None or not mask.is_floating_point())
        if not native:
            v = self.expand_kv(v)
        if self.uniform:
            y = uniform_attention(v, mask, is_causal, T)  # (B, H, T, hs), or (B, H, 1, hs): one for every query
            if y.size(0) != B:  # groups of rows share their keys
                y = y.repeat_interleave(B // y.size(0), 0)
            out = self._merge(y, B, y.size(2))  # the output projection once per sentence when all queries agree
            return out.expand(B, T, out.size(-1)) if out.size(1) != T else out
        assert k is not None
        if not native:
            k = self.expand_kv(k)
        q = self.split_heads(self.q_proj(x))  # (B, H, T, hs)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if rope is not None:
            q = rotate(q, rope)
        if mask is not None and mask.is_floating_point():
            if map_keep is not None:
                raise ValueError("AttendOut's map decisions scale q.k; a position bias (T5) would stay: not supported")
            if mask.size(1) != self.n_heads:  # heads removed: the bias rows of the heads left
                mask = mask.index_select(1, self.head_ids.to(mask.device))
            mask = mask.to(q.dtype)
        if map_keep is not None:  # logits q.k scale with q
            q = q * (map_keep if map_keep.dim() == 0 else map_keep.view(-1, 1, 1, 1)).to(q.dtype)
        drop = self.attn_dropout if self.training else 0.0
        b = k.size(0)
        if step:  # (B, H, 1, hs) -> (B, KV, G, hs): a group's query heads are consecutive
            KV, hs = k.size(1), self.head_dim
            y = attention(q.reshape(B, KV, -1, hs), k, v, mask, drop, scale=self.scale, softcap=self.softcap)
            y = y.reshape(B, self.n_heads, 1, hs)
        elif b != B:  # groups of G rows share keys: one attention with G*T queries per key set
            G, H, hs = B // b, self.n_heads, self.head_dim
            q = q.view(b, G, H, T, hs).transpose(1, 2).reshape(b, H, G * T, hs)
            y = attention(q, k, v, mask, drop, scale=self.scale, softcap=self.softcap)
            y = y.view(b, H, G, T, hs).transpose(1, 2).reshape(B, H, T, hs)
        else:  # k, v: (B, KV, S, hs) under native grouped-query attention, else one per query head
            y = attention(q, k, v, mask, drop, is_causal, scale=self.scale, softcap=self.softcap)
        return self._merge(y, B, T)

    def _merge(self, y: Tensor, B: int, T: int) -> Tensor:
        """Per-head outputs (B, H, T, hs) -> head gates, concatenation, output projection, component gate."""
        g = self.head_gate
        if self.gated and not all_ones(g):  # (B, H, T, hs) scaled per head; a (B, H) gate: per example
            y = y * (g.view(1, -1, 1, 1) if g.dim() == 1 else g[:, :, None, None])
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*hs) heads concatenated
        return self._output(self.out_proj(y))

    def _output(self, y: Tensor) -> Tensor:
        """The output projection's (B, T, C) -> the sandwich post-norm, then the component gate."""
        if self.post_norm is not None:
            y = self.post_norm(y)
        return gated(y, self.gate) if self.gated else y

    def project_kv(self, mem: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor | None, Tensor]:
        """Keys and values of `mem` (B, S, C): (B, KV, S, hs) each, the keys normalised (qk_norm) and rotated
        (rope: cos/sin (S, hs) of their positions); no keys for a uniform map."""
        v = self.split_heads(self.v_proj(mem))
        if self.uniform:
            return None, v
        k = self.split_heads(self.k_proj(mem))
        if self.k_norm is not None:
            k = self.k_norm(k)
        return (rotate(k, rope) if rope is not None else k), v

    @torch.no_grad()
    def make_uniform(self) -> None:
        """Prune the attention map structurally (AttendOut): every query attends with weight 1/n to the n
        keys it may see, so the Q and K projections and the score computation are gone."""
        self.uniform = True
        self.q_proj = None
        self.k_proj = None

    @torch.no_grad()
    def prune_heads(self, heads: Iterable[int]) -> None:
        """Cut heads out of the projections: their rows of Q/K/V and columns of O. `heads` are original head
        numbers (as in `enc.0.sa.h3`), so pruning twice composes; heads already gone are ignored. Under grouped-query
        attention a K/V group goes with the last of its query heads."""
        drop = {int(h) for h in heads}
        keep = [i for i, orig in enumerate(self.head_ids.tolist()) if orig not in drop]
        if len(keep) == self.n_heads:
            return
        hs = self.head_dim

        def rows(slots: list[int]) -> Tensor:
            return torch.tensor([i * hs + j for i in slots for j in range(hs)], dtype=torch.long)

        kv_keep = keep
        if self.grouped:
            left = {int(self.head_groups[i]) for i in keep}
            kv_keep = [i for i, g in enumerate(self.kv_ids.tolist()) if g in left]
        for name, r in (("q_proj", rows(keep)), ("k_proj", rows(kv_keep)), ("v_proj", rows(kv_keep))):
            old = getattr(self, name)
            if old is not None:  # a uniform map has no Q or K
                setattr(self, name, _sliced_linear(old, rows=r.to(old.weight.device)))
        self.out_proj = _sliced_linear(self.out_proj, cols=rows(keep).to(self.out_proj.weight.device))
        idx = torch.tensor(keep, dtype=torch.long, device=self.head_ids.device)
        self.head_gate = self.head_gate[idx.to(self.head_gate.device)].clone()
        self.head_ids = self.head_ids[idx].clone()
        if self.grouped:
            self.head_groups = self.head_groups[idx].clone()
            self.kv_ids = self.kv_ids[torch.tensor(kv_keep, dtype=torch.long, device=idx.device)].clone()
            sizes = torch.bincount(self.group_index(), minlength=len(self.kv_ids)).tolist()
            self.even_groups = len(set(sizes)) <= 1
        self.n_heads = len(keep)

    def heads_of_groups(self, groups: Iterable[int]) -> list[int]:
        """The original numbers of the query heads left in K/V groups `groups` (original group numbers); without
        grouped-query attention every head is its own group."""
        wanted = {int(g) for g in groups}
        if not self.grouped:
            return [h for h in self.head_ids.tolist() if h in wanted]
        return [h for h, g in zip(self.head_ids.tolist(), self.head_groups.tolist(), strict=True) if g in wanted]

    def prune_groups(self, groups: Iterable[int]) -> None:
        """Remove K/V groups for real, and with them every query head that reads them."""
        self.prune_heads(self.heads_of_groups(groups))


class FeedForward(nn.Module):
    """fc2(act(fc1 x)), or with ffn="glu" fc2(act(fc1 x) * fc3 x): SwiGLU with fc1 the gate projection and fc3 the
    linear one (w1, w3 in Meta's Llama code; gate_proj, up_proj in transformers)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gated = cfg.gated
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ff_bias)
        self.fc3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.ff_bias) if cfg.ffn == "glu" else None
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.ff_bias)
        self.post_norm = make_norm(cfg, cfg.d_model) if cfg.sandwich_norm else None  # Gemma 2/3, as in attention
        self.activation = cfg.activation  # a name, not a function: the module stays picklable and printable
        self.dropout = Dropout(cfg.dropout if cfg.activation_dropout is None else cfg.activation_dropout)
        self.register_buffer("gate", torch.ones(()))

    @property
    def width(self) -> int:
        """Hidden neurons left (d_ff until neurons are removed)."""
        return self.fc1.out_features

    def neuron_numbers(self) -> list[int]:
        """The original number of each hidden neuron left, in slot order."""
        ids = getattr(self, "neuron_ids", None)
        return ids.tolist() if ids is not None else list(range(self.fc1.out_features))

    @torch.no_grad()
    def prune_neurons(self, neurons: Iterable[int]) -> None:
        """Cut hidden neurons out: their rows of fc1 (and fc3) and columns of fc2, so the sub-layer computes what it
        did with those neurons' fc2 columns at zero. `neurons` are original numbers, so pruning twice composes;
        neurons already gone are ignored. A `neuron_ids` buffer (the original numbers left) appears with the first
        removal, so the state dicts of unpruned models keep their keys."""
        drop = {int(n) for n in neurons}
        numbers = self.neuron_numbers()
        keep = [i for i, orig in enumerate(numbers) if orig not in drop]
        if len(keep) == len(numbers):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.fc1.weight.device)
        self.fc1 = _sliced_linear(self.fc1, rows=idx)
        if self.fc3 is not None:
            self.fc3 = _sliced_linear(self.fc3, rows=idx)
        self.fc2 = _sliced_linear(self.fc2, cols=idx)
        ids = torch.tensor([numbers[i] for i in keep], dtype=torch.long, device=self.gate.device)
        if hasattr(self, "neuron_ids"):
            self.neuron_ids = ids
        else:
            self.register_buffer("neuron_ids", ids)

    def forward(self, x: Tensor) -> Tensor:
        h = ACTIVATIONS[self.activation](self.fc1(x))  # (B, T, width)
        if self.fc3 is not None:
            h = h * self.fc3(x)
        y = self.fc2(self.dropout(h))  # (B, T, C)
        if self.post_norm is not None:
            y = self.post_norm(y)
        return gated(y, self.gate) if self.gated else y


class Residual(nn.Module):
    """x + dropout(f(LN(x))) with pre-norm, LN(x + dropout(f(x))) with post-norm. Under shared_norm (Phi) the layer
    holds the one norm both sub-layers read, and `norm` here is the identity."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.norm = nn.Identity() if cfg.shared_norm else make_norm(cfg, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def inp(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre_norm else x

    def out(self, x: Tensor, y: Tensor) -> Tensor:
        x = x + self.dropout(y)
        return x if self.pre_norm else self.norm(x)


class Layer(nn.Module):
    """A stack layer: named sub-layers, each with its residual wrapper. A removed sub-layer (`remove`) has
    no parameters and adds nothing to the residual stream; under LayerDrop a sub-layer (`layerdrop`) or the whole
    layer (`enc_layerdrop`, `dec_layerdrop`) is skipped at random in training, its parameters touched at zero cost
    so that DDP still sees them used."""

    kinds: tuple[str, ...] = ()

    def __init__(self, cfg: TransformerConfig, prefix: str):
        super().__init__()
        self.layerdrop = cfg.layerdrop
        self.whole_drop = cfg.enc_layerdrop if prefix.startswith("enc.") else cfg.dec_layerdrop
        self.cfg = cfg
        for kind in self.kinds:
            if f"{prefix}.{kind}" in cfg.removed:
                setattr(self, kind, None)
                setattr(self, f"{kind}_res", None)
            else:
                setattr(self, kind, FeedForward(cfg) if kind == "ff" else MultiHeadAttention(cfg))
                setattr(self, f"{kind}_res", Residual(cfg))

    def remove(self, kind: str) -> None:
        setattr(self, kind, None)
        setattr(self, f"{kind}_res", None)

    def restore(self, kind: str) -> None:
        """Build a removed sub-layer again (freshly initialised, with every head), on the layer's device."""
        if getattr(self, kind) is not None:
            return
        like = next((p for p in self.parameters()), None)
        module = FeedForward(self.cfg) if kind == "ff" else MultiHeadAttention(self.cfg)
        res = Residual(self.cfg)
        for m in (module, res):
            for name, p in m.named_parameters():
                if p.dim() == 2:
                    nn.init.xavier_uniform_(p)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)
                else:  # a norm's weight
                    nn.init.ones_(p)
            for norm in m.modules():  # Gemma's (1 + w) norms start at w = 0
                if isinstance(norm, RMSNorm):
                    norm.reset_parameters()
            if like is not None:
                m.to(device=like.device, dtype=like.dtype)
        setattr(self, kind, module)
        setattr(self, f"{kind}_res", res)

    def skip(self, kind: str, x: Tensor, inputs: Tensor | None = None) -> Tensor | None:
        """x itself when the sub-layer is absent or dropped this step; None when it runs. `inputs`: another
        input the sub-layer would have read (the encoder output, for encoder attention), touched too, so
        that what produces it still takes part in the loss when every reader of it is dropped."""
        module = getattr(self, kind)
        if module is None:
            return x
        if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
            res = getattr(self, f"{kind}_res")
            touch = sum(p.sum() for p in (*module.parameters(), *res.parameters()))
            if inputs is not None:
                touch = touch + inputs.sum()
            return x + 0.0 * touch  # zero gradients for the dropped sub-layer, so DDP sees it used
        return None

    def dropped(self, x: Tensor, inputs: Tensor | None = None) -> Tensor | None:
        """x when the whole layer is skipped this training step (whole-layer LayerDrop), its parameters and
        `inputs` (the encoder output a decoder layer reads) touched at zero cost; None when it runs."""
        if not (self.training and self.whole_drop > 0 and float(torch.rand(())) < self.whole_drop):
            return None
        touch = sum(p.sum() for p in self.parameters())
        if inputs is not None:
            touch = touch + inputs.sum()
        return x + 0.0 * touch

    def norm_of(self, kind: str) -> nn.Module:
        """The norm whose input is sub-layer `kind`'s residual stream (its own pre-norm; under shared_norm the
        layer's one norm), which the components criteria hook to read that stream."""
        return getattr(self, f"{kind}_res").norm

    def ff_block(self, x: Tensor) -> Tensor:
        if (y := self.skip("ff", x)) is not None:
            return y
        return self.ff_res.out(x, self.ff(self.ff_res.inp(x)))


class EncoderLayer(Layer):
    kinds = ("sa", "ff")

    def forward(self, x: Tensor, src_mask: Tensor, map_keep: Tensor | None = None) -> Tensor:
        if (y := self.dropped(x)) is not None:
            return y
        if (y := self.skip("sa", x)) is None:
            h = self.sa_res.inp(x)
            x = self.sa_res.out(x, self.sa(h, *self.sa.project_kv(h), mask=src_mask, map_keep=map_keep))
        else:
            x = y
        return self.ff_block(x)


class DecoderLayer(Layer):
    kinds = ("sa", "ea", "ff")

    def forward(
        self,
        x: Tensor,
        mem: Tensor,
        mem_mask: Tensor,
        cache: dict[str, Tensor] | None = None,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        """self_mask: None (causal self-attention), or the additive mask of Transformer.decoder_inputs (the causal
        mask with a position bias, T5)."""
        if cache is None and (y := self.dropped(x, mem)) is not None:
            return y
        if (y := self.skip("sa", x)) is None:
            h = self.sa_res.inp(x)
            k, v = self.sa.project_kv(h)  # (B, H, T, hs)
            if cache is None:  # full sequence: causal self-attention
                y = self.sa(h, k, v, mask=self_mask, is_causal=self_mask is None)
            else:  # one new position: it may see every cached position, so no mask is needed
                if "sa_k" in cache:
                    k, v = torch.cat([cache["sa_k"], k], dim=2), torch.cat([cache["sa_v"], v], dim=2)
                cache["sa_k"], cache["sa_v"] = k, v
                y = self.sa(h, k, v, mask=self_mask)
            x = self.sa_res.out(x, y)
        else:
            x = y
        if (y := self.skip("ea", x, mem)) is None:
            if cache is None or "ea_k" not in cache:
                ek, ev = self.ea.project_kv(mem)  # (B, H, S, hs)
                if cache is not None:
                    cache["ea_k"], cache["ea_v"] = ek, ev
            else:
                ek, ev = cache["ea_k"], cache["ea_v"]
            x = self.ea_res.out(x, self.ea(self.ea_res.inp(x), ek, ev, mask=mem_mask))
        else:
            x = y
        return self.ff_block(x)


class Transformer(nn.Module):
    """Encoder-decoder with one shared vocabulary: source, target and output embeddings are tied."""

    kind = "translation"
    pretrained_from: str | None = None  # the checkpoint folder an imported model's weights come from
    decoder_layer: type[Layer] = DecoderLayer  # a decoder-only language model's has no encoder attention
    pads: bool = True  # the pad id's embedding is held at zero (a language model pads with a real token, or none)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.embed_dim or cfg.d_model  # the embeddings' width
        P = cfg.d_model if cfg.project_first else E  # the positions' width: they are added after project_first's
        self.embed = nn.Embedding(cfg.vocab_size, E, padding_idx=cfg.pad_id if self.pads else None)
        # optional parts exist only when asked for, so the default model's parameters, state-dict keys and
        # random initialisation stay exactly what they were before these options
        self.pos_embed = nn.Embedding(cfg.max_len, P) if cfg.positions == "learned" else None
        if cfg.positions == "sinusoidal":  # fairseq's per-sentence numbering keeps its padding row at zero
            pad_row = cfg.position_offset - 1 if cfg.position_offset else None
            table = sinusoidal_positions(cfg.max_len, P, cfg.pos_layout, pad_row)
            self.register_buffer("pos", table, persistent=False)
        if cfg.logit_bias:  # persistent: part of the trained model (only when asked for, so default keys stay)
            self.register_buffer("logit_bias", torch.zeros(cfg.vocab_size))
        self.type_embed = nn.Embedding(cfg.type_vocab_size, E) if cfg.type_vocab_size else None
        self.embed_norm = nn.LayerNorm(E, eps=cfg.norm_eps) if cfg.embed_norm else nn.Identity()
        # BART's decoder has its own position table and embedding LayerNorm (the encoder's keep their names)
        own = cfg.stack_embeddings and cfg.dec_layers
        self.dec_pos_embed = nn.Embedding(cfg.max_len, P) if own and cfg.positions == "learned" else None
        self.dec_embed_norm = nn.LayerNorm(E, eps=cfg.norm_eps) if own and cfg.embed_norm else None
        # T5: one relative position bias per stack, (buckets, H), shared by the stack's layers
        relative = cfg.positions == "relative"
        self.enc_rel_bias = nn.Embedding(cfg.rel_buckets, cfg.n_heads) if relative and cfg.enc_layers else None
        self.dec_rel_bias = nn.Embedding(cfg.rel_buckets, cfg.n_heads) if relative and cfg.dec_layers else None
        self.drop = Dropout(cfg.dropout)
        # ELECTRA's embeddings_project (after the embedding LayerNorm), or OPT-350M's project_in (before the positions)
        self.embed_proj = nn.Linear(E, cfg.d_model, bias=not cfg.project_first) if E != cfg.d_model else None
        self.head_proj = nn.Linear(cfg.d_model, E, bias=False) if cfg.project_first and E != cfg.d_model else None
        self.enc = nn.ModuleList(EncoderLayer(cfg, f"enc.{i}") for i in range(cfg.enc_layers))
        self.dec = nn.ModuleList(self.decoder_layer(cfg, f"dec.{i}") for i in range(cfg.dec_layers))
        # pre-norm leaves the residual stream un-normalised, so each stack ends with a LayerNorm
        # (post-norm ends every sub-layer with one already, as BERT does: no final LayerNorm there)
        self.enc_norm = make_norm(cfg, cfg.d_model) if cfg.pre_norm and cfg.enc_layers else nn.Identity()
        self.dec_norm = make_norm(cfg, cfg.d_model) if cfg.pre_norm and cfg.dec_layers else nn.Identity()
        self.reset_parameters()
        # a separate output projection (a decoder-only model's lm_head; T5 v1.1 files with their own): made after
        # the reset, so that the random init of every model without one stays what it was
        self.lm_head = None
        if not cfg.tie_embeddings and cfg.dec_layers:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
            nn.init.normal_(self.lm_head.weight, std=cfg.d_model**-0.5)
            if cfg.lm_head_bias:
                nn.init.zeros_(self.lm_head.bias)

    def reset_parameters(self) -> None:
        tables = ("embed.weight", "pos_embed.weight", "type_embed.weight", "dec_pos_embed.weight")
        for name, p in self.named_parameters():
            if p.dim() == 2 and name not in tables and not name.endswith("rel_bias.weight"):
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.weight, mean=0.0, std=self.cfg.d_model**-0.5)
        for table in (self.enc_rel_bias, self.dec_rel_bias):
            if table is not None:
                nn.init.normal_(table.weight, mean=0.0, std=self.cfg.d_model**-0.5)
        for table in (self.pos_embed, self.type_embed, self.dec_pos_embed):  # BERT's initializer_range
            if table is not None:
                nn.init.normal_(table.weight, mean=0.0, std=0.02)
        if self.pads:
            with torch.no_grad():
                self.embed.weight[self.cfg.pad_id].zero_()

    def position_ids(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """The position of each token of tokens (B, T): (T,), or (B, T) with position_offset k > 0, RoBERTa's
        `create_position_ids_from_input_ids` (fairseq's make_positions): the real tokens are numbered k, k+1, ...
        in order, skipping padding, and every pad token sits at k-1 (RoBERTa: k = pad_id + 1, pads at pad_id)."""
        k = self.cfg.position_offset
        if not k:  # BART's learned table starts `position_shift` rows in
            return torch.arange(offset, offset + tokens.size(1), device=tokens.device) + self.cfg.position_shift
        # fairseq's make_positions (M2M100, NLLB): incremental decoding counts the `offset` tokens before
        real = (tokens != self.cfg.pad_id).long()  # (B, T)
        return (torch.cumsum(real, dim=1) + offset) * real + (k - 1)  # (B, T)

    def embed_tokens(self, tokens: Tensor, offset: int = 0, types: Tensor | None = None, stack: str = "enc") -> Tensor:
        """tokens (B, T) -> input states (B, T, C): token (+ token type) + position embeddings, then the optional
        embedding LayerNorm, dropout, and the projection embed_dim -> d_model. `types` (B, T): token types (segment
        ids), 0 everywhere when None. `stack`: "dec" reads the decoder's own position table and embedding LayerNorm
        where the model has them (stack_embeddings)."""
        T = tokens.size(1)
        if self.cfg.position_offset + self.cfg.position_shift + offset + T > self.cfg.max_len:
            raise ValueError(f"sequence of length {offset + T} exceeds the model's {self.max_positions} positions")
        x = self.embed(tokens)  # (B, T, C)
        if self.cfg.embed_scale:
            x = x * math.sqrt(self.cfg.d_model)
        first = self.cfg.project_first and self.embed_proj is not None
        if first:  # OPT-350M: project_in, then the positions in d_model
            x = self.embed_proj(x)
        if self.type_embed is not None:  # added before the positions, in BERT's order (fp sums are not associative)
            x = x + self.type_embed(types if types is not None else torch.zeros_like(tokens))
        decoder = stack == "dec" and self.cfg.stack_embeddings
        table = self.dec_pos_embed if decoder else self.pos_embed
        if table is not None:
            x = x + table(self.position_ids(tokens, offset))
        elif self.cfg.positions in ("rope", "relative"):  # the positions enter in every attention, not here
            pass
        elif self.cfg.position_offset:
            x = x + self.pos[self.position_ids(tokens, offset)]
        else:
            x = x + self.pos[offset : offset + T]
        norm = self.dec_embed_norm if decoder and self.dec_embed_norm is not None else self.embed_norm
        x = self.drop(norm(x))
        return x if self.embed_proj is None or first else self.embed_proj(x)  # (B, T, d_model)

    @property
    def max_positions(self) -> int:
        """The longest sequence the position table holds."""
        return self.cfg.max_len - self.cfg.position_offset - self.cfg.position_shift

    def key_mask(self, src: Tensor) -> Tensor:
        return (src != self.cfg.pad_id)[:, None, None, :]  # (B, 1, 1, S) True = real token

    def position_bias(self, stack: str, T: int, S: int, offset: int = 0, dtype: torch.dtype | None = None) -> Tensor:
        """T5's relative position bias of queries at positions offset .. offset+T-1 over keys 0 .. S-1, from the
        stack's table: (1, H, T, S), H the heads the model was built with."""
        table = self.enc_rel_bias if stack == "enc" else self.dec_rel_bias
        assert table is not None, "position_bias needs positions='relative'"
        q = torch.arange(offset, offset + T, device=table.weight.device)
        rel = torch.arange(S, device=q.device)[None, :] - q[:, None]  # (T, S) key position - query position
        buckets = relative_buckets(rel, stack == "enc", self.cfg.rel_buckets, self.cfg.rel_max_distance)
        bias = table(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)
        return bias if dtype is None else bias.to(dtype)

    def encoder_inputs(self, src: Tensor, types: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """src (B, S) -> (the first encoder layer's input (B, S, C), the mask every encoder layer attends with): the
        key mask (B, 1, 1, S), or with relative positions the additive (B, H, S, S) of the bias and the key mask."""
        x = self.embed_tokens(src, types=types)
        mask = self.key_mask(src)
        if self.enc_rel_bias is None:
            return x, mask
        S = src.size(1)
        bias = self.position_bias("enc", S, S, dtype=x.dtype)
        return x, bias.masked_fill(~mask, torch.finfo(x.dtype).min)

    def decoder_inputs(self, tgt: Tensor, offset: int = 0) -> tuple[Tensor, Tensor | None]:
        """Target tokens (B, T) at positions offset.. -> (the first decoder layer's input (B, T, C), the self-attention
        mask: None, causal attention over the T positions or the cache; with relative positions the additive
        (1, H, T, offset+T) of the bias and the causal mask)."""
        x = self.embed_tokens(tgt, offset=offset, stack="dec")
        if self.dec_rel_bias is None:
            return x, None
        T = tgt.size(1)
        bias = self.position_bias("dec", T, offset + T, offset, dtype=x.dtype)
        if T > 1:  # query offset+t sees keys 0 .. offset+t
            future = torch.ones(T, offset + T, dtype=torch.bool, device=x.device).triu(offset + 1)
            bias = bias.masked_fill(future, torch.finfo(x.dtype).min)
        return x, bias

    def encode(self, src: Tensor, map_keep: Tensor | None = None, types: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """src (B, S) token ids -> memory (B, S, C) and its key mask (B, 1, 1, S). map_keep (B, enc_layers):
        AttendOut's keep (1) / drop (0) decision for each layer's self-attention map, per example. types (B, S):
        token types, for a model with `type_vocab_size` (0 everywhere when None)."""
        x, self_mask = self.encoder_inputs(src, types)
        for i, layer in enumerate(self.enc):
            x = layer(x, self_mask, None if map_keep is None else map_keep[:, i])
        return self.enc_norm(x), self.key_mask(src)

    def logits(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, V): x * logit_scale through the output projection (the tied embedding, or `lm_head`),
        plus `logit_bias` when the config has one."""
        if self.cfg.logit_scale != 1.0:
            x = x * self.cfg.logit_scale
        if self.head_proj is not None:  # OPT-350M's project_out: d_model -> embed_dim, then the tied embedding
            x = self.head_proj(x)
        if self.lm_head is not None:
            logits = self.lm_head(x)
        elif self.cfg.logit_bias:
            logits = F.linear(x, self.embed.weight, self.logit_bias.to(x.dtype))
        else:
            logits = F.linear(x, self.embed.weight)
        if (c := self.cfg.logit_softcap) is not None:  # Gemma 2: squashed into (-c, c)
            # in place on F.linear's own output; lm_head's forward hooks may hold theirs
            logits = soft_cap(logits, c, fresh=self.lm_head is None)
        return logits

    def decode(self, tgt_in: Tensor, mem: Tensor, mem_mask: Tensor) -> Tensor:
        """Teacher-forced decoding of the whole target prefix: (B, T) -> logits (B, T, V)."""
        x, self_mask = self.decoder_inputs(tgt_in)
        for layer in self.dec:
            x = layer(x, mem, mem_mask, None, self_mask)
        return self.logits(self.dec_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        mem, mem_mask = self.encode(src)
        return self.decode(tgt_in, mem, mem_mask)

    def example_losses(self, batch: dict) -> Tensor:
        """Per-sentence loss L(x): the mean token negative log-likelihood of the reference, (B,)."""
        logits = self(batch["src"], batch["tgt_in"])  # (B, T, V)
        tgt = batch["tgt_out"]
        nll = token_cross_entropy(logits.flatten(0, 1), tgt.flatten(), self.cfg.pad_id)  # fp32 at least
        mask = (tgt != self.cfg.pad_id).float()
        return (nll.view_as(mask) * mask).sum(1) / mask.sum(1).clamp(min=1)

    def new_cache(self) -> Cache:
        return [{} for _ in self.dec]

    def decode_step(self, token: Tensor, mem: Tensor, mem_mask: Tensor, cache: Cache, step: int) -> Tensor:
        """Incremental decoding: token (B,) at position `step` -> logits (B, V); cache grows in place."""
        x, self_mask = self.decoder_inputs(token[:, None], offset=step)  # (B, 1, C)
        for layer, c in zip(self.dec, cache, strict=True):
            x = layer(x, mem, mem_mask, cache=c, self_mask=self_mask)
        return self.logits(self.dec_norm(x))[:, 0]

    @staticmethod
    def reorder_cache(cache: Cache, rows: Tensor, sentences: Tensor | None = None) -> None:
        """Keep self-attention cache rows `rows` (beam search picks surviving hypotheses). The encoder-attention
        keys and values are stored once per sentence: `sentences` keeps those (when sentences leave the batch);
        without it they stay as they are (beams move only among the rows of their own sentence)."""
        for c in cache:
            for key in c:
                if key.startswith("ea_"):
                    if sentences is not None:
                        c[key] = c[key].index_select(0, sentences)
                else:
                    c[key] = c[key].index_select(0, rows)
