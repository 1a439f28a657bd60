"""OPT checkpoints (Zhang et al. 2022; config.json `model_type` "opt": OPT-125M ... OPT-66B) in and out of prunelab's
CausalLM: the smallest rows of SparseGPT's and Wanda's tables.

What OPT is, in TransformerConfig terms: pre-norm (`do_layer_norm_before`) with a final LayerNorm, LayerNorm eps
1e-5, learned positions whose table starts 2 rows in (`position_shift=2`, OPTLearnedPositionalEmbedding's offset:
with right padding, as prunelab batches, position p reads row p + 2), ReLU, biases in every Linear
(`enable_bias`), no embedding scale, the output projection tied to the token embedding. The checkpoint's dropouts
are kept for training. OPT-350M: post-norm layers without a final LayerNorm (`do_layer_norm_before: false`), and a
`word_embed_proj_dim`-wide embedding projected to the model's width before the positions are added (project_in)
and back before the tied output (project_out): prunelab's `project_first`, `embed_proj` and `head_proj`.

Refused in one line: LayerNorms without weights (`layer_norm_elementwise_affine: false`) and
`_remove_final_layer_norm`."""

from __future__ import annotations

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

MODEL_TYPES = ("opt",)
MODEL_CLASS = CausalLM
TASK = "language_modeling"
ARCHITECTURES = {"opt": "OPTForCausalLM"}
FF_WIDTH_KEYS = {"opt": ("ffn_dim",)}
LAYER_COUNT_KEYS = {"opt": {"dec": ("num_hidden_layers",)}}
FAMILY_CAPABILITIES = {"opt": ("import", "export", "heads", "oneshot", "structured", "generation")}
FAMILY_CUTS = {"opt": ("heads", "neurons", "layers", "sublayers")}

POSITION_SHIFT = 2  # OPTLearnedPositionalEmbedding's offset


def opt_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of an OPT model -> the TransformerConfig of the same network (see the module doc)."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise UserError(f"model_type {hf.get('model_type')!r} is not an OPT checkpoint (model_type 'opt')")
    d = num(hf, "hidden_size")
    refused = {
        "layer_norm_elementwise_affine": (False, "LayerNorms without weights"),
        "_remove_final_layer_norm": (True, "no final LayerNorm"),
    }
    for key, (bad, what) in refused.items():
        if hf.get(key) is bad:
            raise UserError(f"config.json sets {key}={bad} ({what}): not supported for an OPT import")
    width = hf.get("word_embed_proj_dim") or d
    if not hf.get("tie_word_embeddings", True):
        raise UserError("an OPT checkpoint with tie_word_embeddings=false: prunelab ties OPT's output projection")
    bias = bool(hf.get("enable_bias", True))
    layers = num(hf, "num_hidden_layers")
    return TransformerConfig(
        vocab_size=num(hf, "vocab_size"),
        d_model=d,
        n_heads=num(hf, "num_attention_heads"),
        d_ff=num(hf, "ffn_dim"),
        enc_layers=0,
        dec_layers=layers,
        layer_numbers=recorded_layers(hf, dec=layers),
        dropout=float(hf.get("dropout", 0.1)),
        attn_dropout=float(hf.get("attention_dropout", 0.0)),
        activation_dropout=0.0,  # OPT's fc1 -> act -> fc2 has no dropout between them
        dec_layerdrop=float(hf.get("layerdrop") or 0.0),
        pre_norm=hf.get("do_layer_norm_before", True) is not False,  # OPT-350M: post-norm, no final LayerNorm
        embed_dim=width if width != d else None,
        project_first=width != d,  # project_in before the positions, project_out before the tied output
        max_len=num(hf, "max_position_embeddings") + POSITION_SHIFT,  # the table's rows
        position_shift=POSITION_SHIFT,
        pad_id=pad_token(hf),
        norm_eps=1e-5,
        activation=activation(hf, "activation_function", "relu"),
        embed_scale=False,
        positions="learned",
        qkv_bias=bias,
        out_bias=bias,
        ff_bias=bias,
        tie_embeddings=True,
    )


network_config = opt_config


def key_map(cfg: TransformerConfig) -> dict[str, str]:
    """HF key (without `model.decoder.`) -> prunelab key."""
    m = {"embed_tokens.weight": "embed.weight", "embed_positions.weight": "pos_embed.weight"}
    if cfg.pre_norm:
        m.update(wb("final_layer_norm", "dec_norm"))
    if cfg.project_first:
        m.update({"project_in.weight": "embed_proj.weight", "project_out.weight": "head_proj.weight"})
    parts = {
        "self_attn.q_proj": "sa.q_proj",
        "self_attn.k_proj": "sa.k_proj",
        "self_attn.v_proj": "sa.v_proj",
        "self_attn.out_proj": "sa.out_proj",
        "fc1": "ff.fc1",
        "fc2": "ff.fc2",
    }
    for i in range(cfg.dec_layers):
        for theirs, mine in parts.items():
            m[f"layers.{i}.{theirs}.weight"] = f"dec.{i}.{mine}.weight"
            if cfg.qkv_bias:
                m[f"layers.{i}.{theirs}.bias"] = f"dec.{i}.{mine}.bias"
        m.update(wb(f"layers.{i}.self_attn_layer_norm", f"dec.{i}.sa_res.norm"))
        m.update(wb(f"layers.{i}.final_layer_norm", f"dec.{i}.ff_res.norm"))
    return m


def load_hf_opt(path: str | Path, weights: bool = True, **overrides: Any) -> CausalLM:
    """A local OPT folder -> a CausalLM computing the same logits (eval mode, fp32)."""
    _, cfg, state = read_family(path, opt_config, weights, overrides)
    if state is None:
        return with_generation(CausalLM(cfg), path)
    head = state.pop("lm_head.weight", None)  # the tied output projection, where a file stores it
    names, shown = file_names(path, state, prefix="model.decoder.")
    if head is not None and not torch.equal(head, state[names.get("embed_tokens.weight", "")]):
        raise UserError(f"{path}: lm_head.weight differs from the token embedding: an untied OPT checkpoint")
    mapping = key_map(cfg)
    return imported(CausalLM(cfg), path, "opt", state, names, mapping, shown=lambda n: shown + n)


# the Family protocol's names; Hydra (model=hf) builds it as the other causal language models
load, build = load_hf_opt, partial(build_hf_causal_lm, loader=load_hf_opt)


def export_folder(
    model: CausalLM,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under OPTForCausalLM's keys): `model.decoder.` + the import's keys; the tied output
    projection is left to transformers, as its save_pretrained does."""
    no_labels(labels)
    return dict(hf), rename_keys(state, {"model.decoder." + k: v for k, v in key_map(cfg).items()})
