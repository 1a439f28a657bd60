"""Gemma checkpoints (config.json `model_type` "gemma", "gemma2", "gemma3_text": the text-only Gemma 3 models, such as
gemma-3-1b) in and out of prunelab's CausalLM.

What they are, in TransformerConfig terms: Llama's layer and key names (grouped-query attention, gate/up/down
projections, a final norm, no biases unless `attention_bias`) with

- RMSNorms that scale by 1 + weight, in fp32 (`norm="gemma_rms"`), the token embeddings times sqrt(hidden_size)
  (`embed_scale`), GeGLU (the tanh GELU: Gemma 1's legacy `hidden_act="gelu"` means it, as transformers reads it), an
  explicit `head_dim` (Gemma-2B: 8 heads of 256 in a width of 2,048), and a tied output projection;
- Gemma 2 and 3: the attention scaled by query_pre_attn_scalar^-1/2 instead of head_dim^-1/2; a norm on each
  sub-layer's output as well as its input (`sandwich_norm`: input_layernorm / post_attention_layernorm around the
  attention, pre_feedforward_layernorm / post_feedforward_layernorm around the MLP); sliding-window attention in the
  layers `layer_types` names "sliding_attention" (defaults as transformers': Gemma 2 every other layer from the
  first, Gemma 3 five of every six); the attention logits and the final logits soft-capped, c * tanh(x / c)
  (`attn_logit_softcapping`, `final_logit_softcapping`; Gemma 2: 50 and 30, Gemma 3: none);
- Gemma 3: a (1 + w) RMSNorm over each head's queries and keys (`qk_norm`), and two rotary bases: the sliding layers
  rotate with the local one (rope_parameters["sliding_attention"], older files rope_local_base_freq, default 10,000,
  unscaled), the global layers with rope_theta (default 1,000,000) and its linear scaling (`local_rope_theta`).

Refused with one line: Gemma 3's bidirectional attention (EmbeddingGemma, `use_bidirectional_attention`), a scaled
local rotary base, and rope scalings prunelab cannot compute exactly."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.causal_lm import (
    ROTARY_BUFFERS,
    build_hf_causal_lm,
    decoder_shape,
    in_model,
    llama_names,
    rope_settings,
    sliding_layers,
)
from prunelab.hf.causal_lm import (
    key_map as llama_key_map,
)
from prunelab.hf.checkpoint import (
    activation,
    no_labels,
    num,
    read_family,
    rename_keys,
)
from prunelab.hf.generation import imported, with_generation
from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import TransformerConfig

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
MODEL_CLASS = CausalLM
TASK = "language_modeling"
ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
FF_WIDTH_KEYS = {t: ("intermediate_size",) for t in MODEL_TYPES}
LAYER_COUNT_KEYS = {t: {"dec": ("num_hidden_layers",)} for t in MODEL_TYPES}
FAMILY_CAPABILITIES = {t: ("import", "export", "heads", "oneshot", "structured", "generation") for t in MODEL_TYPES}
FAMILY_CUTS = {t: ("heads", "kv_groups", "neurons", "layers", "sublayers") for t in MODEL_TYPES}
# Gemma2Config's and Gemma3TextConfig's defaults where config.json leaves a key out
SOFTCAP_DEFAULTS = {"gemma2": (50.0, 30.0), "gemma3_text": (None, None)}  # (attention, final logits)
SLIDING_WINDOW_PATTERN = {"gemma2": 2, "gemma3_text": 6}  # layer i slides unless (i + 1) % pattern == 0
SANDWICH_NORMS = {  # Gemma 2/3's four norms of a layer -> prunelab's
    "input_layernorm": "sa_res.norm",
    "post_attention_layernorm": "sa.post_norm",
    "pre_feedforward_layernorm": "ff_res.norm",
    "post_feedforward_layernorm": "ff.post_norm",
}


def _activation(hf: dict[str, Any]) -> str:
    if hf["model_type"] == "gemma":  # GemmaConfig turns the legacy "gelu" of the official files into the tanh one
        act = hf.get("hidden_act") or "gelu_pytorch_tanh"
        return activation({"act": "gelu_pytorch_tanh" if act == "gelu" else act}, "act", "gelu_pytorch_tanh")
    return activation(hf, "hidden_activation", "gelu_pytorch_tanh")


def _ropes(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float | None]:
    """(the global rotary base, its scaling, Gemma 3's local base or None)."""
    if hf["model_type"] != "gemma3_text":
        return (*rope_settings(hf), None)
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:  # transformers 5: one set per layer type
        full, local = params.get("full_attention") or {}, params.get("sliding_attention") or {}
    else:  # older files: rope_theta and rope_scaling for the global layers, rope_local_base_freq for the local ones
        full = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 1_000_000.0)}
        local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    full.setdefault("rope_theta", 1_000_000.0)
    kind = local.get("rope_type", local.get("type", "default"))
    if kind != "default":
        raise UserError(f"gemma3_text: rope scaling {kind!r} of the local (sliding) layers is not supported")
    theta, scaling = rope_settings({"rope_parameters": full})
    return theta, scaling, float(local.get("rope_theta", 10_000.0))


def gemma_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a Gemma, Gemma 2 or Gemma 3 (text) model -> the TransformerConfig of the same network."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise UserError(f"model_type {kind!r} is not a Gemma checkpoint (model types {', '.join(MODEL_TYPES)})")
    if hf.get("use_bidirectional_attention"):
        raise UserError("use_bidirectional_attention=true (an embedding model): prunelab's language models are causal")
    layers = num(hf, "num_hidden_layers")
    theta, scaling, local_theta = _ropes(hf)
    bias = bool(hf.get("attention_bias", False))
    later = kind != "gemma"  # Gemma 2 and 3
    window, window_layers, attn_cap, logit_cap = None, None, None, None
    if later:
        pattern = SLIDING_WINDOW_PATTERN[kind]
        default = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]
        window, window_layers = sliding_layers(hf, hf.get("sliding_window"), default)
        caps = SOFTCAP_DEFAULTS[kind]
        attn_cap = hf.get("attn_logit_softcapping", caps[0])
        logit_cap = hf.get("final_logit_softcapping", caps[1])
    return TransformerConfig(
        **decoder_shape(hf),
        dropout=0.0,  # Gemma has no hidden dropout
        norm="gemma_rms",
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        activation=_activation(hf),
        ffn="glu",
        embed_scale=True,  # x sqrt(d_model): Gemma's hidden_size
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        local_rope_theta=local_theta if window is not None else None,
        qkv_bias=bias,
        out_bias=bias,
        ff_bias=False,
        qk_norm=kind == "gemma3_text",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        attn_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5 if later else None,  # their default: 256
        sandwich_norm=later,
        attn_softcap=None if attn_cap is None else float(attn_cap),
        logit_softcap=None if logit_cap is None else float(logit_cap),
        sliding_window=window,
        window_layers=window_layers,
    )


network_config = gemma_config


def key_map(kind: str, cfg: TransformerConfig) -> dict[str, str]:
    """Gemma's key (without `model.`) -> prunelab key: Llama's, with Gemma 2/3's four norms a layer."""
    m = llama_key_map("llama", cfg)
    if not cfg.sandwich_norm:
        return m
    m = {k: v for k, v in m.items() if not k.endswith(("input_layernorm.weight", "post_attention_layernorm.weight"))}
    for i in range(cfg.dec_layers):
        for theirs, mine in SANDWICH_NORMS.items():
            m[f"layers.{i}.{theirs}.weight"] = f"dec.{i}.{mine}.weight"
    return m


def load_hf_gemma(path: str | Path, weights: bool = True, **overrides: Any) -> CausalLM:
    """A local Gemma / Gemma 2 / Gemma 3 (text) folder -> a CausalLM computing the same logits (eval mode, fp32)."""
    hf, cfg, state = read_family(path, gemma_config, weights, overrides)
    if state is None:
        return with_generation(CausalLM(cfg), path)
    names = llama_names(state, cfg, path)
    mapping = key_map(hf["model_type"], cfg)
    return imported(CausalLM(cfg), path, hf["model_type"], state, names, mapping, dropped=ROTARY_BUFFERS)


# the Family protocol's names; Hydra (model=hf) builds it as the other causal language models
load, build = load_hf_gemma, partial(build_hf_causal_lm, loader=load_hf_gemma)


def export_folder(
    model: CausalLM,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under Gemma(2|3)ForCausalLM's keys); a tied head is not written, as save_pretrained."""
    no_labels(labels)
    tensors = rename_keys(state, key_map(hf["model_type"], cfg))
    return dict(hf), in_model(tensors)
