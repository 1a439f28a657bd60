"""GPT-NeoX checkpoints (config.json `model_type` "gpt_neox": the Pythia suite, GPT-NeoX-20B) in and out of
prunelab's CausalLM.

What they are, in TransformerConfig terms: pre-norm LayerNorms (eps `layer_norm_eps`) with a final one, the attention
and the MLP in parallel on the layer's input (`use_parallel_residual`: x + attn(LN1 x) + mlp(LN2 x); false: the
usual sequential layer), rotary positions on the first `partial_rotary_factor` (older files: `rotary_pct`) of each
head's features (`rotary_dims`; base `rope_theta`, older files `rotary_emb_base`) in the half-split layout, biases
in every Linear, exact GELU (`hidden_act`), a separate output projection (`embed_out`), no embedding scale.

The file's fused `query_key_value` (3C, C) holds each head's query, key and value rows side by side (head h: rows
3·hs·h ... of q, then k, then v); it is split into prunelab's q_proj, k_proj and v_proj on import and fused back on
export. Older files' attention.bias / masked_bias / rotary_emb.inv_freq buffers are dropped."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.causal_lm import build_hf_causal_lm, pad_token
from prunelab.hf.checkpoint import (
    activation,
    no_labels,
    num,
    read_family,
    recorded_layers,
    rename_keys,
    wb,
)
from prunelab.hf.generation import imported, with_generation
from prunelab.hf.seq2seq import file_names
from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import TransformerConfig

MODEL_TYPES = ("gpt_neox",)
MODEL_CLASS = CausalLM
TASK = "language_modeling"
ARCHITECTURES = {"gpt_neox": "GPTNeoXForCausalLM"}
FF_WIDTH_KEYS = {"gpt_neox": ("intermediate_size",)}
LAYER_COUNT_KEYS = {"gpt_neox": {"dec": ("num_hidden_layers",)}}
FAMILY_CAPABILITIES = {"gpt_neox": ("import", "export", "heads", "oneshot", "structured", "generation")}
FAMILY_CUTS = {"gpt_neox": ("heads", "neurons", "layers", "sublayers")}

DROPPED = re.compile(r"layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)")


def _rope(hf: dict[str, Any]) -> tuple[float, float]:
    """(rope_theta, the rotated fraction of each head) from transformers 5's rope_parameters or the older keys."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise UserError(f"rope scaling {kind!r} of a gpt_neox checkpoint is not supported (only unscaled rotary)")
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 0.25)))
    return float(theta), float(fraction)


def gpt_neox_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a GPT-NeoX / Pythia model -> the TransformerConfig of the same network (see the module doc)."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise UserError(f"model_type {hf.get('model_type')!r} is not a GPT-NeoX checkpoint (model_type 'gpt_neox')")
    if hf.get("tie_word_embeddings"):
        raise UserError("a gpt_neox checkpoint with tie_word_embeddings=true: prunelab reads GPT-NeoX's own embed_out")
    d, H = num(hf, "hidden_size"), num(hf, "num_attention_heads")
    theta, fraction = _rope(hf)
    bias = bool(hf.get("attention_bias", True))
    layers = num(hf, "num_hidden_layers")
    return TransformerConfig(
        vocab_size=num(hf, "vocab_size"),
        d_model=d,
        n_heads=H,
        d_ff=num(hf, "intermediate_size"),
        enc_layers=0,
        dec_layers=layers,
        layer_numbers=recorded_layers(hf, dec=layers),
        dropout=float(hf.get("hidden_dropout", 0.0)),
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        activation_dropout=0.0,
        pre_norm=True,
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        max_len=num(hf, "max_position_embeddings"),
        pad_id=pad_token(hf),
        norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        activation=activation(hf, "hidden_act", "gelu"),
        embed_scale=False,
        positions="rope",
        rope_theta=theta,
        rotary_dims=int(d // H * fraction),  # transformers: int(head_size * partial_rotary_factor)
        qkv_bias=bias,
        out_bias=bias,
        ff_bias=True,
        tie_embeddings=False,
    )


network_config = gpt_neox_config


def key_map(cfg: TransformerConfig) -> dict[str, str]:
    """HF key (without `gpt_neox.`; `embed_out.weight` is outside it), with query_key_value already split into
    attention.q/k/v -> prunelab key."""
    m = {"embed_in.weight": "embed.weight", "embed_out.weight": "lm_head.weight", **wb("final_layer_norm", "dec_norm")}
    parts = {
        "attention.q": "sa.q_proj",
        "attention.k": "sa.k_proj",
        "attention.v": "sa.v_proj",
        "attention.dense": "sa.out_proj",
        "mlp.dense_h_to_4h": "ff.fc1",
        "mlp.dense_4h_to_h": "ff.fc2",
        "input_layernorm": "sa_res.norm",
        "post_attention_layernorm": "ff_res.norm",
    }
    for i in range(cfg.dec_layers):
        for theirs, mine in parts.items():
            m[f"layers.{i}.{theirs}.weight"] = f"dec.{i}.{mine}.weight"
            if cfg.qkv_bias or not theirs.startswith("attention."):
                m[f"layers.{i}.{theirs}.bias"] = f"dec.{i}.{mine}.bias"
    return m


def split_qkv(state: dict[str, Tensor], names: dict[str, str], cfg: TransformerConfig, path: str | Path) -> None:
    """Each layer's fused query_key_value (3C, C) and bias (3C,), per head [q | k | v], into attention.q/k/v (in
    place in `state`, under their own names in `names`)."""
    H, hs = cfg.n_heads, cfg.hs
    for n in [n for n in names if n.endswith(("attention.query_key_value.weight", "attention.query_key_value.bias"))]:
        fused = state.pop(names.pop(n))
        if fused.shape[0] != 3 * H * hs:
            raise UserError(f"{path}: {n} has shape {tuple(fused.shape)}, needs ({3 * H * hs}, ...)")
        per_head = fused.view(H, 3, hs, *fused.shape[1:])  # head h: its q, k, v rows side by side
        stem, p = n.rsplit(".query_key_value.", 1)
        for j, part in enumerate("qkv"):
            name = f"{stem}.{part}.{p}"
            state[name] = per_head[:, j].reshape(H * hs, *fused.shape[1:]).contiguous()
            names[name] = name


def load_hf_gpt_neox(path: str | Path, weights: bool = True, **overrides: Any) -> CausalLM:
    """A local GPT-NeoX / Pythia folder -> a CausalLM computing the same logits (eval mode, fp32)."""
    _, cfg, state = read_family(path, gpt_neox_config, weights, overrides)
    if state is None:
        return with_generation(CausalLM(cfg), path)
    names, _ = file_names(path, state, prefix="gpt_neox.")
    split_qkv(state, names, cfg, path)
    mapping = key_map(cfg)
    return imported(CausalLM(cfg), path, "gpt_neox", state, names, mapping, dropped=DROPPED)


# the Family protocol's names; Hydra (model=hf) builds it as the other causal language models
load, build = load_hf_gpt_neox, partial(build_hf_causal_lm, loader=load_hf_gpt_neox)


def export_folder(
    model: CausalLM,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under GPTNeoXForCausalLM's keys): q, k, v fused back into query_key_value per head."""
    no_labels(labels)
    tensors = rename_keys(state, key_map(cfg))
    H, hs = cfg.n_heads, cfg.hs
    out: dict[str, Tensor] = {}
    for i in range(cfg.dec_layers):
        for p in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            parts = [tensors.pop(f"layers.{i}.attention.{x}.{p}") for x in "qkv"]
            rest = parts[0].shape[1:]
            fused = [t.view(H, hs, *rest) for t in parts]
            out[f"gpt_neox.layers.{i}.attention.query_key_value.{p}"] = torch.stack(fused, 1).reshape(3 * H * hs, *rest)
    for n, t in tensors.items():
        out[n if n == "embed_out.weight" else f"gpt_neox.{n}"] = t
    return dict(hf), out
