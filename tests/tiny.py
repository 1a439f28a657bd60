"""Tiny Llama-shaped models for unit tests: one definition of the Llama block (RMSNorm, SwiGLU, rotary positions,
no biases, unscaled embeddings), as prunelab builds it and as transformers configures it, sized by each test."""

from __future__ import annotations

from typing import Any

import torch

from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import TransformerConfig

# what makes a prunelab decoder a Llama: the block's switches, whatever the sizes
LLAMA_BLOCK: dict[str, Any] = dict(
    norm="rms",
    ffn="glu",
    activation="silu",
    positions="rope",
    embed_scale=False,
    qkv_bias=False,
    out_bias=False,
    ff_bias=False,
)


def llama_config(**sizes: Any) -> TransformerConfig:
    """A decoder-only TransformerConfig with the Llama block: 3 layers of width 32, 4 query heads over 2 K/V groups,
    unless `sizes` say otherwise."""
    kw: dict[str, Any] = dict(vocab_size=40, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, dec_layers=3, dropout=0.0)
    return TransformerConfig(**{**kw, **LLAMA_BLOCK, **sizes, "enc_layers": 0})


def tiny_llama(seed: int = 0, **sizes: Any) -> CausalLM:
    """A random CausalLM of `llama_config(**sizes)`, in eval mode, its weights drawn after `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    return CausalLM(llama_config(**sizes)).eval()


def hf_llama_config(**changes: Any) -> Any:
    """transformers' LlamaConfig of a 2-layer model of width 32 (4 query heads over 2 K/V groups, untied head)."""
    import transformers

    kw: dict[str, Any] = dict(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return transformers.LlamaConfig(**{**kw, **changes})
