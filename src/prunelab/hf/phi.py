"""Phi checkpoints (config.json `model_type` "phi": Phi-1, Phi-1.5, Phi-2; "phi3": Phi-3, Phi-3.5, Phi-4-mini) in
and out of prunelab's CausalLM.

What they are, in TransformerConfig terms:

    phi   one LayerNorm (eps `layer_norm_eps`) per layer read by the attention and the MLP side by side,
          x + attn(LN x) + mlp(LN x) (`parallel_residual`, `shared_norm`); rotary positions on the first
          `partial_rotary_factor` of each head (default 0.5), half-split; biases in every Linear, the separate
          `lm_head` included (`lm_head_bias`); GELU (tanh: gelu_new); a final LayerNorm; optional `qk_layernorm`
          (a LayerNorm over each head's queries and keys: `qk_norm`); grouped-query attention if
          num_key_value_heads says so. Its `embd_pdrop` (dropout on the embeddings, 0 in the released models)
          is taken as `resid_pdrop`, prunelab's one hidden dropout.
    phi3  Llama's layer (RMSNorm, SwiGLU, no biases, grouped-query attention, a separate lm_head) with the query,
          key and value projections fused in `qkv_proj` ([all q | all k | all v] rows) and the gate and up
          projections in `gate_up_proj` ([gate | up] rows): split into prunelab's Linears on import, fused on
          export. Partial rotary (`partial_rotary_factor`, Phi-4-mini: 0.75) and `sliding_window` in every layer
          (Phi-3-mini: 2,047) are implemented; LongRoPE (`rope_scaling` type longrope / su / yarn, the 128k-context
          models) changes the angles with the sequence length and is refused by name."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.causal_lm import (
    ROTARY_BUFFERS,
    build_hf_causal_lm,
    decoder_shape,
    in_model,
    llama_names,
    rope_settings,
)
from prunelab.hf.causal_lm import (
    key_map as llama_key_map,
)
from prunelab.hf.checkpoint import (
    activation,
    no_labels,
    read_family,
    rename_keys,
    wb,
)
from prunelab.hf.generation import imported, with_generation
from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import TransformerConfig

MODEL_TYPES = ("phi", "phi3")
MODEL_CLASS = CausalLM
TASK = "language_modeling"
ARCHITECTURES = {"phi": "PhiForCausalLM", "phi3": "Phi3ForCausalLM"}
FF_WIDTH_KEYS = {t: ("intermediate_size",) for t in MODEL_TYPES}
LAYER_COUNT_KEYS = {t: {"dec": ("num_hidden_layers",)} for t in MODEL_TYPES}
FAMILY_CAPABILITIES = {t: ("import", "export", "heads", "oneshot", "structured", "generation") for t in MODEL_TYPES}
FAMILY_CUTS = {t: ("heads", "kv_groups", "neurons", "layers", "sublayers") for t in MODEL_TYPES}
PARTIAL_ROTARY_DEFAULTS = {"phi": 0.5, "phi3": 1.0}  # PhiConfig's and Phi3Config's


def _rotary_fraction(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    default = PARTIAL_ROTARY_DEFAULTS[hf["model_type"]]
    return float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", default)))


def phi_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a Phi or Phi-3 model -> the TransformerConfig of the same network (see the module doc)."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise UserError(f"model_type {kind!r} is not a Phi checkpoint (model types {', '.join(MODEL_TYPES)})")
    shape = decoder_shape(hf)
    hs = shape["head_dim"]
    theta, scaling = rope_settings(hf)  # LongRoPE and other length-dependent scalings: one error naming them
    common = dict(
        **shape,
        dropout=float(hf.get("resid_pdrop", 0.0)),
        embed_scale=False,
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_dims=int(hs * _rotary_fraction(hf)),  # transformers: int(head_dim * partial_rotary_factor)
    )
    if kind == "phi":
        if hf.get("tie_word_embeddings"):
            raise UserError("a phi checkpoint with tie_word_embeddings=true: Phi's lm_head has a bias of its own")
        return TransformerConfig(
            **common,
            parallel_residual=True,
            shared_norm=True,
            norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            activation=activation(hf, "hidden_act", "gelu_new"),
            qk_norm=bool(hf.get("qk_layernorm", False)),
            tie_embeddings=False,
            lm_head_bias=True,
        )
    return TransformerConfig(
        **common,
        norm="rms",
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        activation=activation(hf, "hidden_act", "silu"),
        ffn="glu",
        qkv_bias=False,
        out_bias=False,
        ff_bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        sliding_window=hf.get("sliding_window"),  # every layer, as Phi3Model masks them
    )


network_config = phi_config


def phi_key_map(cfg: TransformerConfig) -> dict[str, str]:
    """Phi's key (without `model.`; lm_head outside it) -> prunelab key."""
    m = {"embed_tokens.weight": "embed.weight", **wb("final_layernorm", "dec_norm"), **wb("lm_head", "lm_head")}
    parts = {
        "self_attn.q_proj": "sa.q_proj",
        "self_attn.k_proj": "sa.k_proj",
        "self_attn.v_proj": "sa.v_proj",
        "self_attn.dense": "sa.out_proj",
        "mlp.fc1": "ff.fc1",
        "mlp.fc2": "ff.fc2",
        "input_layernorm": "norm",
    }
    if cfg.qk_norm:
        parts.update({"self_attn.q_layernorm": "sa.q_norm", "self_attn.k_layernorm": "sa.k_norm"})
    for i in range(cfg.dec_layers):
        for theirs, mine in parts.items():
            m.update(wb(f"layers.{i}.{theirs}", f"dec.{i}.{mine}"))
    return m


def key_map(kind: str, cfg: TransformerConfig) -> dict[str, str]:
    """The family's key (without `model.`) -> prunelab key; Phi-3's with its fused projections already split into
    Llama's names (q_proj, k_proj, v_proj, gate_proj, up_proj)."""
    return phi_key_map(cfg) if kind == "phi" else llama_key_map("llama", cfg)


def split_fused(state: dict[str, Tensor], names: dict[str, str], cfg: TransformerConfig, path: str | Path) -> None:
    """Phi-3's qkv_proj (rows [q | k | v]) and gate_up_proj (rows [gate | up]) into Llama's projections, in place in
    `state` and `names` (normalised name -> the name in `state`)."""
    q, kv = cfg.n_heads * cfg.hs, cfg.kv_heads * cfg.hs
    fused = {"self_attn.qkv_proj.weight": (("q", q), ("k", kv), ("v", kv))}
    fused["mlp.gate_up_proj.weight"] = (("gate", cfg.d_ff), ("up", cfg.d_ff))
    for n in [n for n in names if n.endswith(tuple(fused))]:
        suffix = next(s for s in fused if n.endswith(s))
        sizes = fused[suffix]
        w = state.pop(names.pop(n))
        if w.shape[0] != sum(size for _, size in sizes):
            raise UserError(f"{path}: {n} has {w.shape[0]} rows, needs {sum(size for _, size in sizes)}")
        stem, module = n.removesuffix(suffix), suffix.split(".")[0]
        for (part, _), chunk in zip(sizes, w.split([size for _, size in sizes]), strict=True):
            name = f"{stem}{module}.{part}_proj.weight"
            state[name], names[name] = chunk.contiguous(), name


def load_hf_phi(path: str | Path, weights: bool = True, **overrides: Any) -> CausalLM:
    """A local Phi / Phi-3 folder -> a CausalLM computing the same logits (eval mode, fp32)."""
    hf, cfg, state = read_family(path, phi_config, weights, overrides)
    if state is None:
        return with_generation(CausalLM(cfg), path)
    kind = hf["model_type"]
    names = llama_names(state, cfg, path)
    if kind == "phi3":
        split_fused(state, names, cfg, path)
    mapping = key_map(kind, cfg)
    return imported(CausalLM(cfg), path, kind, state, names, mapping, dropped=ROTARY_BUFFERS)


# the Family protocol's names; Hydra (model=hf) builds it as the other causal language models
load, build = load_hf_phi, partial(build_hf_causal_lm, loader=load_hf_phi)


def export_folder(
    model: CausalLM,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under Phi(3)ForCausalLM's keys); Phi-3's projections fused back."""
    no_labels(labels)
    kind = hf["model_type"]
    tensors = rename_keys(state, key_map(kind, cfg))
    if kind == "phi3":
        for i in range(cfg.dec_layers):
            h = f"layers.{i}"
            qkv = [tensors.pop(f"{h}.self_attn.{p}_proj.weight") for p in "qkv"]
            tensors[f"{h}.self_attn.qkv_proj.weight"] = torch.cat(qkv)
            gate_up = [tensors.pop(f"{h}.mlp.{p}_proj.weight") for p in ("gate", "up")]
            tensors[f"{h}.mlp.gate_up_proj.weight"] = torch.cat(gate_up)
    return dict(hf), in_model(tensors)
