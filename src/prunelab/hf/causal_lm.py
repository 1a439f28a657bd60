"""Import a Hugging Face decoder-only language model (GPT-2; Llama, Mistral, Qwen2, Qwen3 and the models built on
them, such as SmolLM) into prunelab's CausalLM, and export it back. The Llama-layout helpers here (key names, the rope
settings, sliding layers, the Hydra entry) serve the other decoder-only families too (prunelab.hf.opt, .gpt_neox,
.phi, .gemma).

Each key of the file is mapped to a prunelab key, dropped on purpose, or an error naming it; every prunelab
parameter is filled. What the families are, in TransformerConfig terms:

    GPT-2        LayerNorm (eps layer_norm_epsilon), learned positions, GELU (tanh: gelu_new), biases everywhere,
                 the output projection tied to wte. Its Conv1D weights are (in, out): transposed here; the fused
                 c_attn (in, 3C) is split into Q, K and V. The causal-mask buffers of older files are dropped.
    Llama family RMSNorm (rms_norm_eps), rotary positions (rope_theta and rope_scaling, or transformers 5's
                 rope_parameters) in the half-split layout HF checkpoints use, SwiGLU (gate_proj, up_proj,
                 down_proj = fc1, fc3, fc2), grouped-query attention (num_key_value_heads), no biases unless
                 attention_bias / mlp_bias (Qwen2: Q/K/V biases, none on O), Qwen3's per-head q_norm / k_norm, an
                 explicit head_dim, and a tied or separate lm_head (tie_word_embeddings).

Sliding-window attention is implemented (Mistral's sliding_window in every layer; Qwen2's with use_sliding_window, in
the layers layer_types or max_window_layers make sliding). Refused with one line: mixture of experts, GPT-2's
scale_attn_by_inverse_layer_idx / scale_attn_weights=false / cross-attention, rope scalings other than linear and llama3
(dynamic NTK, YaRN, LongRoPE change the positions' angles with the length), and activations prunelab does not have. The
checkpoint's own tokenizer is the data's (data.tokenizer defaults to model.path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import (
    activation,
    no_labels,
    num,
    read_family,
    recorded_layers,
    rename_keys,
    resolve_checkpoint,
)
from prunelab.hf.generation import imported, with_generation
from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import ROPE_TYPES, TransformerConfig

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
MODEL_TYPES = ("gpt2", *LLAMA_FAMILY)
MODEL_CLASS = CausalLM
ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# config.json's feed-forward width, set on export when every feed-forward kept the same number of neurons
FF_WIDTH_KEYS = {"gpt2": ("n_inner",), **{t: ("intermediate_size",) for t in LLAMA_FAMILY}}
LAYER_COUNT_KEYS = {
    "gpt2": {"dec": ("n_layer", "num_hidden_layers")},
    **{t: {"dec": ("num_hidden_layers",)} for t in LLAMA_FAMILY},
}
TASK = "language_modeling"
FAMILY_CAPABILITIES = {t: ("import", "export", "heads", "oneshot", "structured", "generation") for t in MODEL_TYPES}
FAMILY_CUTS = {  # GPT-2 has a K/V head per query head: no groups to cut
    t: ("heads", "neurons", "layers", "sublayers")
    if t == "gpt2"
    else ("heads", "kv_groups", "neurons", "layers", "sublayers")
    for t in MODEL_TYPES
}
# tie_word_embeddings when config.json lacks the key: transformers' own default for the family (LlamaConfig,
# MistralConfig, Qwen2Config and Qwen3Config: False, a separate lm_head; GPT2Config: True)
TIE_DEFAULTS = {"gpt2": True, "llama": False, "mistral": False, "qwen2": False, "qwen3": False}
# model types that are these architectures with a mixture of experts in place of the feed-forward
MIXTURE_OF_EXPERTS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "phimoe", "dbrx")
# GPT-2's causal-mask buffers (attn.bias, attn.masked_bias), saved by older versions of transformers
GPT2_DROPPED = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
# the rotary frequencies older Llama-layout files saved with the weights (prunelab computes its own)
ROTARY_BUFFERS = re.compile(r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from config.json: transformers 5's `rope_parameters`, or the older
    `rope_theta` + `rope_scaling`. Scalings prunelab cannot compute exactly are refused."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta, scaling = params["rope_theta"], dict(params)
    else:
        theta, scaling = hf.get("rope_theta", 10000.0), dict(hf.get("rope_scaling") or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise UserError(
            f"rope scaling {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)}): its angles depend on the "
            "sequence length"
        )
    if kind == "default":
        return float(theta), None
    keep = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
    out: dict[str, Any] = {"rope_type": kind, **{k: float(scaling[k]) for k in keep}}
    if kind == "llama3":
        out["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
    return float(theta), out


def pad_token(hf: dict[str, Any]) -> int:
    """The id that pads batches: config.json's pad_token_id, else its end-of-sequence id (GPT-2's and most Llama
    checkpoints have no pad token), else 0. Padding is never attended to or scored, so this only fills."""
    for key in ("pad_token_id", "eos_token_id"):
        v = hf.get(key)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None:
            return int(v)
    return 0


def causal_lm_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a GPT-2 or Llama-family model -> the TransformerConfig of the same network."""
    kind = hf.get("model_type")
    if kind in MIXTURE_OF_EXPERTS or hf.get("num_local_experts") or hf.get("num_experts"):
        raise UserError(f"model_type {kind!r} is a mixture of experts: prunelab's feed-forward is one dense MLP")
    if kind not in MODEL_TYPES:
        raise UserError(f"model_type {kind!r} is not a supported causal language model ({', '.join(MODEL_TYPES)})")
    if kind == "gpt2":
        return _gpt2_config(hf)
    window, window_layers = _sliding_window(hf, kind)
    theta, scaling = rope_settings(hf)
    attn_bias = bool(hf.get("attention_bias", False))
    return TransformerConfig(
        **decoder_shape(hf),
        dropout=0.0,  # these families have no hidden dropout
        norm_eps=float(num(hf, "rms_norm_eps")),
        norm="rms",
        activation=activation(hf, "hidden_act", "silu"),
        ffn="glu",
        embed_scale=False,
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=attn_bias or kind == "qwen2",  # Qwen2's Q/K/V always have biases, its O none
        out_bias=attn_bias,
        ff_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=kind == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", TIE_DEFAULTS[kind])),
        sliding_window=window,
        window_layers=window_layers,
    )


def decoder_shape(hf: dict[str, Any]) -> dict[str, Any]:
    """The TransformerConfig fields a Llama-layout config.json (Llama family, Phi, Gemma) sets alike: sizes, grouped
    K/V heads, an explicit head_dim, the layers (with a prunelab export's record of the ones kept), positions, pad id,
    attention dropout, a pre-norm decoder-only stack."""
    d, H, layers = num(hf, "hidden_size"), num(hf, "num_attention_heads"), num(hf, "num_hidden_layers")
    return dict(
        vocab_size=num(hf, "vocab_size"),
        d_model=d,
        n_heads=H,
        n_kv_heads=hf.get("num_key_value_heads") or H,
        head_dim=hf.get("head_dim") or d // H,
        d_ff=num(hf, "intermediate_size"),
        enc_layers=0,
        dec_layers=layers,
        layer_numbers=recorded_layers(hf, dec=layers),  # a prunelab export that took layers out
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        activation_dropout=0.0,
        pre_norm=True,
        max_len=num(hf, "max_position_embeddings"),
        pad_id=pad_token(hf),
    )


def _sliding_window(hf: dict[str, Any], kind: str) -> tuple[int | None, tuple[int, ...] | None]:
    """(the window, the layers that use it: None = all) of a Mistral or Qwen2 checkpoint, read as transformers reads
    it: Mistral's `sliding_window` in every layer; Qwen2's only with `use_sliding_window`, in the layers its
    `layer_types` (or, older files, `max_window_layers`) make "sliding_attention". Other attention kinds: refused."""
    window = hf.get("sliding_window")
    if kind != "mistral" and not hf.get("use_sliding_window", False):
        window = None
    layers = num(hf, "num_hidden_layers")
    if hf.get("layer_types") or window is None:
        return sliding_layers(hf, window, None)
    if kind == "mistral":
        return int(window), None
    start = hf.get("max_window_layers", layers)  # Qwen2: the layers from max_window_layers on slide
    return int(window), tuple(range(start, layers))


def sliding_layers(
    hf: dict[str, Any], window: int | None, default_types: Sequence[str] | None
) -> tuple[int | None, tuple[int, ...] | None]:
    """(the window, the layers that slide) from config.json's `layer_types` ("full_attention" / "sliding_attention",
    one per layer), or `default_types` where the file has none (None: no per-layer types); other kinds of attention,
    or sliding layers without a window, are one error."""
    types = hf.get("layer_types") or default_types
    if types and any(t not in ("full_attention", "sliding_attention") for t in types):
        raise UserError(f"config.json's layer_types {sorted(set(types))}: prunelab has full and sliding attention only")
    if types and len(types) != num(hf, "num_hidden_layers"):
        raise UserError(f"config.json's layer_types has {len(types)} entries for {num(hf, 'num_hidden_layers')} layers")
    if window is None:
        if types and "sliding_attention" in types:
            raise UserError("config.json's layer_types has sliding_attention but no sliding_window")
        return None, None
    if types is None:
        return int(window), None
    return int(window), tuple(i for i, t in enumerate(types) if t == "sliding_attention")


def _gpt2_config(hf: dict[str, Any]) -> TransformerConfig:
    for key, bad in (("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True)):
        if hf.get(key) == bad:
            raise UserError(f"config.json sets {key}={bad}: not supported for a GPT-2 import")
    if hf.get("scale_attn_weights", True) is False:
        raise UserError("config.json sets scale_attn_weights=false: prunelab's attention scales by 1/sqrt(head width)")
    d = num(hf, "n_embd", "hidden_size")
    return TransformerConfig(
        vocab_size=num(hf, "vocab_size"),
        d_model=d,
        n_heads=num(hf, "n_head", "num_attention_heads"),
        d_ff=hf.get("n_inner") or 4 * d,
        enc_layers=0,
        dec_layers=num(hf, "n_layer", "num_hidden_layers"),
        layer_numbers=recorded_layers(hf, dec=num(hf, "n_layer", "num_hidden_layers")),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        attn_dropout=float(hf.get("attn_pdrop", 0.1)),
        activation_dropout=0.0,  # GPT-2's MLP drops out after c_proj only (resid_pdrop)
        pre_norm=True,
        max_len=num(hf, "n_positions", "max_position_embeddings"),
        pad_id=pad_token(hf),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=activation(hf, "activation_function", "gelu_new"),
        embed_scale=False,
        positions="learned",
        tie_embeddings=True,
    )


network_config = causal_lm_config  # the name every family module gives it (prunelab.hf.export)


def key_map(kind: str, cfg: TransformerConfig) -> dict[str, str]:
    """Normalised HF key -> prunelab key. Llama family: the file's keys without `model.`; GPT-2: without
    `transformer.`, with c_attn already split into `attn.q`, `attn.k`, `attn.v` and every Conv1D transposed
    (`_gpt2_names`)."""
    m: dict[str, str] = {}
    if kind == "gpt2":
        m.update({"wte.weight": "embed.weight", "wpe.weight": "pos_embed.weight"})
        m.update({"ln_f.weight": "dec_norm.weight", "ln_f.bias": "dec_norm.bias"})
        parts = {
            "ln_1": "sa_res.norm",
            "attn.q": "sa.q_proj",
            "attn.k": "sa.k_proj",
            "attn.v": "sa.v_proj",
            "attn.c_proj": "sa.out_proj",
            "ln_2": "ff_res.norm",
            "mlp.c_fc": "ff.fc1",
            "mlp.c_proj": "ff.fc2",
        }
        for i in range(cfg.dec_layers):
            for theirs, mine in parts.items():
                for p in ("weight", "bias"):
                    m[f"h.{i}.{theirs}.{p}"] = f"dec.{i}.{mine}.{p}"
        return m
    m.update({"embed_tokens.weight": "embed.weight", "norm.weight": "dec_norm.weight"})
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    linears = {
        "self_attn.q_proj": ("sa.q_proj", cfg.qkv_bias),
        "self_attn.k_proj": ("sa.k_proj", cfg.qkv_bias),
        "self_attn.v_proj": ("sa.v_proj", cfg.qkv_bias),
        "self_attn.o_proj": ("sa.out_proj", cfg.out_bias),
        "mlp.gate_proj": ("ff.fc1", cfg.ff_bias),
        "mlp.up_proj": ("ff.fc3", cfg.ff_bias),
        "mlp.down_proj": ("ff.fc2", cfg.ff_bias),
    }
    norms = {"input_layernorm": "sa_res.norm", "post_attention_layernorm": "ff_res.norm"}
    if cfg.qk_norm:
        norms.update({"self_attn.q_norm": "sa.q_norm", "self_attn.k_norm": "sa.k_norm"})
    for i in range(cfg.dec_layers):
        h, e = f"layers.{i}", f"dec.{i}"
        for theirs, (mine, bias) in linears.items():
            m[f"{h}.{theirs}.weight"] = f"{e}.{mine}.weight"
            if bias:
                m[f"{h}.{theirs}.bias"] = f"{e}.{mine}.bias"
        for theirs, mine in norms.items():
            m[f"{h}.{theirs}.weight"] = f"{e}.{mine}.weight"
    return m


def _gpt2_names(state: dict[str, Tensor], cfg: TransformerConfig, path: str | Path) -> dict[str, str]:
    """GPT-2's tensors under normalised names (in place in `state`): `transformer.` taken off, c_attn split into
    q, k, v, every Conv1D weight (in, out) transposed to a Linear's (out, in). -> {normalised name: file's name}."""
    names: dict[str, str] = {}
    C = cfg.d_model
    for k in list(state):
        n = k.removeprefix("transformer.")
        if n == "lm_head.weight":  # the tied output projection: a copy of wte
            wte = state.get("transformer.wte.weight", state.get("wte.weight"))
            if wte is not None and not torch.equal(state[k], wte):
                raise UserError(f"{path}: lm_head.weight differs from wte.weight: an untied GPT-2 checkpoint")
            del state[k]
            continue
        if ".attn.c_attn." in n:
            w = state.pop(k)
            stem = n.replace(".c_attn.weight", "").replace(".c_attn.bias", "")
            p = "weight" if n.endswith("weight") else "bias"
            if w.shape[-1] != 3 * C:
                raise UserError(f"{path}: {k} has shape {tuple(w.shape)}, needs (..., {3 * C})")
            for part, chunk in zip("qkv", w.split(C, dim=-1), strict=True):
                name = f"{stem}.{part}.{p}"
                state[name] = chunk.t().contiguous() if p == "weight" else chunk.contiguous()
                names[name] = name
            continue
        if re.fullmatch(r"h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight", n):
            state[k] = state[k].t().contiguous()
        names[n] = k
    return names


def llama_names(state: dict[str, Tensor], cfg: TransformerConfig, path: str | Path) -> dict[str, str]:
    """The file's names without `model.` (Llama's layout, which Phi, Phi-3 and Gemma share) -> the file's names; a tied
    model's stored copy of the embedding as `lm_head.weight` is checked equal to it and left out."""
    names: dict[str, str] = {}
    for k in state:
        n = k.removeprefix("model.")
        if n in names:
            raise UserError(f"{path}: keys {names[n]!r} and {k!r} both name {n!r}")
        names[n] = k
    if cfg.tie_embeddings and "lm_head.weight" in names:  # a tied copy some files store: it must be the same
        if not torch.equal(state[names["lm_head.weight"]], state[names.get("embed_tokens.weight", "")]):
            raise UserError(f"{path}: lm_head.weight differs from embed_tokens.weight but tie_word_embeddings is true")
        del names["lm_head.weight"]
    return names


def file_key(name: str) -> str:
    """A Llama-layout tensor's normalised name -> its key in the files: `model.` before all but lm_head's."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def in_model(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Export: Llama-layout tensors (normalised names) under the file's names (`file_key`)."""
    return {file_key(n): t for n, t in tensors.items()}


def load_hf_causal_lm(path: str | Path, weights: bool = True, **overrides: Any) -> CausalLM:
    """A local GPT-2 or Llama-family folder (config.json + model.safetensors or pytorch_model.bin) -> a CausalLM
    computing the same logits (eval mode, fp32). `overrides`: training settings among OVERRIDABLE. `weights=False`:
    config.json alone (a run's copy of its source), for a checkpoint to fill."""
    hf, cfg, state = read_family(path, causal_lm_config, weights, overrides)
    if state is None:
        return with_generation(CausalLM(cfg), path)
    kind = hf["model_type"]
    if kind == "gpt2":
        names, dropped = _gpt2_names(state, cfg, path), GPT2_DROPPED
    else:
        names, dropped = llama_names(state, cfg, path), ROTARY_BUFFERS
    mapping = key_map(kind, cfg)
    return imported(CausalLM(cfg), path, kind, state, names, mapping, dropped=dropped)


def build_hf_causal_lm(
    vocab_size: int,
    pad_id: int,
    path: str,
    weights: bool = True,
    loader: Callable[..., CausalLM] | None = None,
    **overrides: Any,
) -> CausalLM:
    """Hydra entry point (`model=hf_causal_lm model.path=DIR`). The data's tokenizer must be the checkpoint's: its
    vocabulary no larger than the embedding table (the table may have spare rows). `pad_id` is the data's: padding
    is never attended to or scored, so it only fills the batches. `loader`: another decoder-only family's import
    (prunelab.hf.opt), default this module's."""
    config = resolve_checkpoint(path) / "config.json"
    if not config.is_file():
        raise UserError(f"model.path={path}: not a Hugging Face model folder (no config.json)")
    model = (loader or load_hf_causal_lm)(path, weights, **overrides)
    if vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"model.path={path} has a vocabulary of {model.cfg.vocab_size} tokens but the data's tokenizer has "
            f"{vocab_size}: the data must use the checkpoint's tokenizer (data.tokenizer=<the model folder>)"
        )
    return model


load, build = load_hf_causal_lm, build_hf_causal_lm  # the Family protocol's names (prunelab.hf.family)


def export_folder(
    model: CausalLM,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Export (prunelab.hf.export): (config.json, tensors under the family's *ForCausalLM keys) of the effective
    state, the inverse of the import: GPT-2's Q, K, V fused into c_attn and its Conv1D weights transposed back.
    The tensor names are those of transformers' own `save_pretrained`: a separate head is `lm_head.weight` (outside
    `model.`), and a tied one is not written (it is the embedding; transformers ties it on loading)."""
    no_labels(labels)
    kind = hf["model_type"]
    mapping = key_map(kind, cfg)
    if kind != "gpt2":
        return dict(hf), in_model(rename_keys(state, mapping))
    tensors = rename_keys(state, mapping)
    out: dict[str, Tensor] = {}
    for i in range(cfg.dec_layers):
        h = f"h.{i}.attn"
        for p in ("weight", "bias"):
            parts = [tensors.pop(f"{h}.{x}.{p}") for x in "qkv"]
            out[f"transformer.{h}.c_attn.{p}"] = torch.cat([t.t() if p == "weight" else t for t in parts], dim=-1)
    for n, t in tensors.items():
        conv = re.fullmatch(r"h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight", n)
        out[f"transformer.{n}"] = t.t().contiguous() if conv else t
    return dict(hf), out
