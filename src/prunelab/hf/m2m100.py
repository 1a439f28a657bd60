"""M2M100 and NLLB-200 checkpoints (config.json `model_type` "m2m_100", both) in and out of prunelab's
encoder-decoder Transformer.

What they are, in TransformerConfig terms: pre-norm with a final LayerNorm per stack (`encoder.layer_norm`,
`decoder.layer_norm`), no embedding LayerNorm, ReLU, embeddings x sqrt(d) (`scale_embedding`), one vocabulary shared
by source, target and the tied output projection, no logit bias, LayerNorm eps 1e-5, and fairseq's sinusoidal
positions: sin in the first d/2 columns and cos in the last with f_j = 10000^(-j/(d/2-1)) (`pos_layout="fairseq"`),
numbered per sentence from pad+1 with every pad token at the zero row `pad` (`position_offset = pad + 1`, the same
numbering RoBERTa uses), in a table of max_position_embeddings + 2 rows. Incremental decoding continues the
numbering (the step-th generated token sits at pad + 1 + step).

Language codes are tokens (M2M100: __en__; NLLB: eng_Latn): the source is [src_code] X </s>, the target
[tgt_code] Y </s>, the decoder starts from </s> and generation forces the target code first (prunelab.data sets it
from data.tgt_lang). NLLB-MoE (model_type nllb-moe) is another network and is refused by the registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import (
    no_labels,
    num,
    read_family,
    rename_keys,
    wb,
)
from prunelab.hf.generation import imported, with_generation
from prunelab.hf.seq2seq import (
    check_same,
    check_table,
    fairseq_shape,
    file_names,
    hydra_entry,
    layer_key_map,
    take_shared,
)
from prunelab.models.positions import sinusoidal_positions
from prunelab.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("m2m_100",)
MODEL_CLASS = Transformer
TASK = "translation"
ARCHITECTURES = {"m2m_100": "M2M100ForConditionalGeneration"}
FF_WIDTH_KEYS = {"m2m_100": ("encoder_ffn_dim", "decoder_ffn_dim")}
LAYER_COUNT_KEYS = {"m2m_100": {"enc": ("encoder_layers", "num_hidden_layers"), "dec": ("decoder_layers",)}}
FAMILY_CAPABILITIES = {"m2m_100": ("import", "export", "heads", "oneshot", "structured", "generation")}
FAMILY_CUTS = {"m2m_100": ("heads", "neurons", "layers", "sublayers")}

TABLE_EXTRA = 2  # M2M100SinusoidalPositionalEmbedding's offset: the table has max_position_embeddings + 2 rows
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
POSITION_TABLES = ("encoder.embed_positions.weights", "decoder.embed_positions.weights")  # old files store them


def m2m100_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of an M2M100 or NLLB-200 model -> the TransformerConfig of the same network (module doc)."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise UserError(f"model_type {hf.get('model_type')!r} is not an M2M100/NLLB checkpoint (model_type 'm2m_100')")
    check_same(hf, [("encoder_attention_heads", "decoder_attention_heads")], "head count")
    check_same(hf, [("encoder_ffn_dim", "decoder_ffn_dim")], "feed-forward width")
    if not hf.get("tie_word_embeddings", True):
        raise UserError("an m2m_100 checkpoint with tie_word_embeddings=false: prunelab ties the output projection")
    shape = fairseq_shape(hf, act="relu", attn_dropout=0.1, scale=True, start="eos_token_id")
    return TransformerConfig(
        **shape,
        pre_norm=True,
        max_len=num(hf, "max_position_embeddings") + TABLE_EXTRA,
        position_offset=shape["pad_id"] + 1,  # real tokens from pad+1, pads at the zero row `pad`
        positions="sinusoidal",
        pos_layout="fairseq",
    )


network_config = m2m100_config


def key_map(cfg: TransformerConfig) -> dict[str, str]:
    """HF key (without `model.`) -> prunelab key."""
    return {
        "shared.weight": "embed.weight",
        **wb("encoder.layer_norm", "enc_norm"),
        **wb("decoder.layer_norm", "dec_norm"),
        **layer_key_map(cfg.enc_layers, cfg.dec_layers),
    }


def load_hf_m2m100(path: str | Path, weights: bool = True, **overrides: Any) -> Transformer:
    """A local M2M100 or NLLB-200 folder -> a Transformer computing the same logits (eval mode, fp32) and, with the
    checkpoint's generation settings, the same translations as `generate`."""
    _, cfg, state = read_family(path, m2m100_config, weights, overrides)
    if state is None:
        return with_generation(Transformer(cfg), path)
    names, shown = file_names(path, state)
    take_shared(path, "m2m_100", state, names, TIED_COPIES)
    table = sinusoidal_positions(cfg.max_len, cfg.d_model, "fairseq", cfg.pad_id)
    for n in POSITION_TABLES:  # recomputed; a stored one must be ours (its rows past ours are not read)
        if n in names:
            theirs = state[names.pop(n)]
            rows = slice(0, min(len(theirs), len(table)))
            check_table(path, shown + n, theirs, table, "fairseq sinusoids, the pad row zero", rows)
    mapping = key_map(cfg)
    return imported(Transformer(cfg), path, "m2m_100", state, names, mapping, shown=lambda n: shown + n)


build_hf_m2m100 = hydra_entry(m2m100_config, load_hf_m2m100)  # Hydra: model=hf model.path=DIR


load, build = load_hf_m2m100, build_hf_m2m100


def export_folder(
    model: Transformer,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under M2M100ForConditionalGeneration's keys): `model.` + the import's keys."""
    no_labels(labels)
    return dict(hf), rename_keys(state, {"model." + k: v for k, v in key_map(cfg).items()})
