"""A decoder-only Transformer language model (GPT-2; Llama, Mistral, Qwen, SmolLM) on the same gated, addressable
blocks as the encoder-decoder:

    dec.{i}.sa     causal self-attention            (D:SA)
    dec.{i}.ff     feed-forward                     (D:FF)
    dec.{i}.sa.h{j}  query head j                   (Michel et al. 2019)
    dec.{i}.sa.g{k}  key/value group k under grouped-query attention (its query heads go with it)

Everything the families differ in is a TransformerConfig option: learned positions (GPT-2) or rotary ones
(`positions="rope"`, `rope_theta`, `rope_scaling`), LayerNorm or RMSNorm (`norm`), a plain or gated feed-forward
(`ffn`), grouped-query attention (`n_kv_heads`), the bias switches, and a tied or separate output projection
(`tie_embeddings`). Batches are left-aligned (right padding): a causal model's real tokens never see the padding
after them, so no key mask is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.models.kernels import token_cross_entropy
from prunelab.models.positions import rope_frequencies, rope_tables
from prunelab.models.transformer import Cache, Layer, Transformer, TransformerConfig, make_norm

IGNORE = -100  # a target that is not scored (strided context, padding), as torch's cross_entropy default
Rope = tuple[Tensor, Tensor]
Ropes = Rope | dict[str, Rope] | None  # the cos/sin tables; Gemma 3: {"global": ..., "local": ...}


class CausalLayer(Layer):
    """Causal self-attention and a feed-forward, each in its residual wrapper (pre-norm for every family here)."""

    kinds = ("sa", "ff")

    def __init__(self, cfg: TransformerConfig, prefix: str):
        super().__init__(cfg, prefix)
        i = int(prefix.split(".")[1])
        windowed = cfg.sliding_window is not None and (cfg.window_layers is None or i in cfg.window_layers)
        self.window = cfg.sliding_window if windowed else None  # None: the whole prefix
        # Gemma 3: the sliding-window ("local") layers rotate with their own base (CausalLM.rope's second table)
        self.local_rope = windowed and cfg.local_rope_theta is not None
        # Phi: one norm read by both parallel sub-layers (theirs are the identity); it stays when either is removed
        self.norm = make_norm(cfg, cfg.d_model) if cfg.shared_norm else None

    def norm_of(self, kind: str) -> nn.Module:
        return self.norm if self.norm is not None else super().norm_of(kind)

    def window_mask(self, T: int, S: int, device: torch.device) -> Tensor | None:
        """The T newest of S positions attending within the window: (T, S), True where query i may see key j
        (i - W < j <= i, transformers' sliding_window_overlay); None when the window holds every key anyway."""
        if self.window is None or S <= self.window:
            return None
        q = torch.arange(S - T, S, device=device)[:, None]
        k = torch.arange(S, device=device)[None, :]
        return (k <= q) & (k > q - self.window)

    def attend(self, h: Tensor, rope: tuple[Tensor, Tensor] | None, cache: dict[str, Tensor] | None) -> Tensor:
        """Causal self-attention of the normed input h (B, T, C), within the layer's sliding window when it has one;
        with a cache, its keys and values appended."""
        k, v = self.sa.project_kv(h, rope)  # (B, KV, T, hs): one head per K/V group
        if cache is not None:  # generation: the prompt at once into an empty cache, then one position a step
            if "sa_k" in cache:
                if h.size(1) != 1:
                    raise ValueError("after the prompt, a cached forward takes one position at a time")
                k, v = torch.cat([cache["sa_k"], k], dim=2), torch.cat([cache["sa_v"], v], dim=2)
            cache["sa_k"], cache["sa_v"] = k, v
        T, S = h.size(1), v.size(2)
        if (mask := self.window_mask(T, S, h.device)) is not None:
            return self.sa(h, k, v, mask=mask, rope=rope)
        return self.sa(h, k, v, is_causal=T > 1, rope=rope)

    def forward(self, x: Tensor, rope: Ropes = None, cache: dict[str, Tensor] | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). rope: the rotary tables, or (Gemma 3) a dict of the "global" and "local" ones."""
        if isinstance(rope, dict):
            rope = rope["local" if self.local_rope else "global"]
        if self.cfg.parallel_residual:  # both sub-layers read x: x + attn(LN1 x) + ff(LN2 x), as GPT-NeoX adds them
            h = self.norm(x) if self.norm is not None else None  # Phi: x + attn(LN x) + ff(LN x)
            out = x
            if self.skip("ff", x) is None:
                out = self.ff_res.dropout(self.ff(h if h is not None else self.ff_res.norm(x))) + out
            if self.skip("sa", x) is None:
                out = self.sa_res.dropout(self.attend(h if h is not None else self.sa_res.norm(x), rope, cache)) + out
            return out
        if (y := self.skip("sa", x)) is None:
            x = self.sa_res.out(x, self.attend(self.sa_res.inp(x), rope, cache))
        else:
            x = y
        return self.ff_block(x)


def nll_of(logits: Tensor, target: Tensor) -> Tensor:
    """Logits (B, T, V) and targets (B, T) -> the negative log-likelihood of every target (B, T), 0 where the target is
    IGNORE; computed in fp32 at least."""
    return token_cross_entropy(logits.flatten(0, 1), target.flatten(), IGNORE).view_as(target)


class CausalLM(Transformer):
    """tokens (B, T) -> next-token logits (B, T, V)."""

    kind = "language_modeling"
    decoder_layer = CausalLayer
    pads = False  # every id is a token here (GPT-2 pads with its end-of-text token)

    def __init__(self, cfg: TransformerConfig):
        if cfg.enc_layers != 0:
            raise ValueError("a decoder-only language model has no encoder: enc_layers must be 0")
        if cfg.dec_layers < 1:
            raise ValueError("a language model needs at least one layer (dec_layers)")
        super().__init__(cfg)  # with the separate output projection (lm_head) when the embeddings are untied
        if cfg.positions == "rope":
            for name, freqs in self.frequencies().items():
                self.register_buffer(name, freqs, persistent=False)

    def frequencies(self) -> dict[str, Tensor]:
        """The rotary frequencies from cfg, fp32: `inv_freq`, and Gemma 3's unscaled `local_inv_freq` of the
        sliding-window layers."""
        cfg = self.cfg
        out = {"inv_freq": rope_frequencies(cfg.rotary_width, cfg.rope_theta, cfg.rope_scaling)}
        if cfg.local_rope_theta is not None:
            out["local_inv_freq"] = rope_frequencies(cfg.rotary_width, cfg.local_rope_theta, None)
        return out

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> CausalLM:
        """`.to()`, `.half()`, `.bfloat16()`, `.cuda()`, `to_empty` and the precision plugins (Lightning's
        `bf16-true` is `.to(bfloat16)`) all come here: the parameters are converted, but the rotary frequencies stay
        fp32 on the new device. They are multiplied by positions in the thousands, so the 8 bits of a bf16 copy would
        turn into angle errors of radians at late positions; recomputed from cfg, they are exactly the fp32 model's."""
        super()._apply(fn, recurse)
        if self.cfg.positions == "rope":
            for name, freqs in self.frequencies().items():
                setattr(self, name, freqs.to(self.inv_freq.device))
        return self

    def rope(self, offset: int, T: int, dtype: torch.dtype) -> Ropes:
        """The cos/sin tables of positions offset .. offset+T-1 (None without rotary positions); with Gemma 3's
        local base, both tables by name."""
        if self.cfg.positions != "rope":
            return None
        tables = rope_tables(self.inv_freq, offset, T, dtype)
        if self.cfg.local_rope_theta is None:
            return tables
        return {"global": tables, "local": rope_tables(self.local_inv_freq, offset, T, dtype)}

    def hidden(self, src: Tensor, cache: Cache | None = None, offset: int = 0) -> Tensor:
        """tokens (B, T) at positions offset.. -> final hidden states (B, T, C), after the final norm."""
        x = self.embed_tokens(src, offset=offset)  # (B, T, C)
        rope = self.rope(offset, src.size(1), x.dtype)
        for i, layer in enumerate(self.dec):
            x = layer(x, rope, None if cache is None else cache[i])
        return self.dec_norm(x)

    def forward(self, src: Tensor, cache: Cache | None = None, offset: int = 0) -> Tensor:  # type: ignore[override]
        """tokens (B, T) -> logits (B, T, V); with a cache (new_cache), the positions offset.. are appended to it."""
        return self.logits(self.hidden(src, cache, offset))

    def token_nll(self, batch: dict[str, Any]) -> Tensor:
        """Negative log-likelihood of every target (B, T), 0 where the target is IGNORE; fp32 at least."""
        return nll_of(self(batch["src"]), batch["target"])

    def example_losses(self, batch: dict[str, Any]) -> Tensor:
        """Per-window loss L(x): the mean NLL of its scored targets, (B,)."""
        nll = self.token_nll(batch)
        n = (batch["target"] != IGNORE).sum(1)
        return nll.sum(1) / n.clamp(min=1)

    def decode_step(self, token: Tensor, cache: Cache, step: int) -> Tensor:  # type: ignore[override]
        """Incremental decoding: token (B,) at position `step` -> next-token logits (B, V); the cache grows."""
        return self(token[:, None], cache, step)[:, 0]

    @staticmethod
    def reorder_cache(cache: Cache, rows: Tensor, sentences: Tensor | None = None) -> None:
        for c in cache:
            for key in c:
                c[key] = c[key].index_select(0, rows)


def build_causal_lm(vocab_size: int, pad_id: int = 0, **kwargs: Any) -> CausalLM:
    """Hydra entry point: `model/decoder_*.yaml` (a language model trained from scratch); vocab_size comes from the
    data. Settings written for the encoder-decoder (enc_layers) do not apply."""
    kwargs.pop("enc_layers", None)
    return CausalLM(TransformerConfig(vocab_size=vocab_size, pad_id=pad_id, enc_layers=0, **kwargs))
