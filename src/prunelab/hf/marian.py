"""Import a Hugging Face MarianMT checkpoint (OPUS-MT, e.g. Helsinki-NLP/opus-mt-en-de) into prunelab's
encoder-decoder Transformer, so that its heads and sub-layers can be studied and pruned under prunelab's addresses
(`enc.{i}.sa.h{j}`, `dec.{i}.ea.h{j}`: head j is rows j*hs ... j*hs+hs-1 of Q/K/V on both sides).

As every family (prunelab.hf.checkpoint): build prunelab's network from config.json, map every key of the file to a
prunelab key by name, and copy tensor by tensor with the shapes asserted. Every key is accounted for: mapped, dropped on
purpose (the sinusoid tables, recomputed and checked against the file; the tied copies of the shared embedding,
checked equal to it), or an error naming it. No transposes: both sides use nn.Linear with separate Q/K/V.

What Marian is, in TransformerConfig terms: post-norm with no final encoder/decoder LayerNorm (`pre_norm=False`),
LayerNorm eps 1e-5, sinusoidal positions from 0 with sin in the first d/2 columns and cos in the last d/2
(`pos_layout="split"`), embeddings x sqrt(d) (`scale_embedding`), `activation_function` (OPUS-MT: swish = SiLU),
one vocabulary shared by source, target and output projection, plus `final_logits_bias` (`logit_bias`). Its
special ids: `</s>` = 0 (eos), `<pad>` = V-1; the decoder starts from pad (`decoder_start_id`) and never emits it
(`ban_pad`, HF's bad_words_ids=[[pad]]); the encoder's key mask is the checkpoint's pad id (`pad_id`). The model keeps
the checkpoint's generation settings (`model.generation`, prunelab.hf.generation: generation_config.json, or
config.json's generation fields), which the translation task decodes with by default.
Checkpoints with separate decoder embeddings (tc-big: `share_encoder_decoder_embeddings=false`, a
`decoder_vocab_size`) are refused. fp16 storage is upcast to fp32."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import (
    account_for_keys,
    copy_weights,
    no_labels,
    num,
    read_family,
    rename_keys,
)
from prunelab.hf.generation import with_generation
from prunelab.hf.seq2seq import (
    check_table,
    fairseq_shape,
    file_names,
    final_logits_bias,
    hydra_entry,
    layer_key_map,
    take_shared,
)
from prunelab.models.positions import sinusoidal_positions
from prunelab.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("marian",)
MODEL_CLASS = Transformer  # what a MarianMT checkpoint is imported into
ARCHITECTURES = {"marian": "MarianMTModel"}  # the class an export is written as (config.json's `architectures`)
# config.json's feed-forward widths, set on export when every feed-forward kept the same number of neurons
FF_WIDTH_KEYS = {"marian": ("encoder_ffn_dim", "decoder_ffn_dim")}
LAYER_COUNT_KEYS = {"marian": {"enc": ("encoder_layers", "num_hidden_layers"), "dec": ("decoder_layers",)}}
TASK = "translation"
FAMILY_CAPABILITIES = {"marian": ("import", "export", "heads", "oneshot", "structured", "generation")}
FAMILY_CUTS = {"marian": ("heads", "neurons", "layers")}  # post-norm: no single sub-layer

# Keys (without the `model.` prefix) that hold the shared embedding again: HF ties them to `shared.weight`, older
# files store every copy. They are checked equal to the shared table and dropped.
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")
# The sinusoid tables: recomputed (pos_layout="split"), checked against the file when it has them, dropped.
POSITION_TABLES = ("encoder.embed_positions.weight", "decoder.embed_positions.weight")

# BART-family switches that Marian's code does not have; a config that sets them is not a Marian network.
NOT_MARIAN = {
    "normalize_before": False,  # pre-norm
    "add_final_layer_norm": False,
    "normalize_embedding": False,  # an embedding LayerNorm
    "add_bias_logits": False,
    "static_position_embeddings": True,
}


def marian_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a MarianMT model -> the TransformerConfig of the same network (see the module doc)."""
    if hf.get("model_type") != "marian":
        raise UserError(f"model_type {hf.get('model_type')!r} is not a MarianMT checkpoint (model_type 'marian')")
    vocab = num(hf, "vocab_size")
    untied = []
    if not hf.get("share_encoder_decoder_embeddings", True):
        untied.append("share_encoder_decoder_embeddings=false")
    if not hf.get("tie_word_embeddings", True):
        untied.append("tie_word_embeddings=false")
    if hf.get("decoder_vocab_size") not in (None, vocab):
        untied.append(f"decoder_vocab_size={hf['decoder_vocab_size']} != vocab_size={vocab}")
    if untied:
        raise UserError(
            f"untied MarianMT checkpoint ({', '.join(untied)}): prunelab's Transformer shares one vocabulary "
            "between source, target and output projection"
        )
    for key, want in NOT_MARIAN.items():
        if key in hf and bool(hf[key]) != want:
            raise UserError(f"config.json sets {key}={hf[key]!r}: not supported for a MarianMT import")
    heads = {num(hf, "encoder_attention_heads"), num(hf, "decoder_attention_heads")}
    d_ff = {num(hf, "encoder_ffn_dim"), num(hf, "decoder_ffn_dim")}
    if len(heads) > 1 or len(d_ff) > 1:
        raise UserError(
            f"encoder and decoder differ in heads {sorted(heads)} or feed-forward width {sorted(d_ff)}: "
            "prunelab's Transformer has one n_heads and one d_ff"
        )
    return TransformerConfig(  # Marian's <pad> (the last id) is the key mask, the pad of decoding and its start
        **fairseq_shape(hf, act="swish", attn_dropout=0.0, scale=False, start="pad_token_id"),
        pre_norm=False,  # post-norm (Marian's "dan"): and so no final encoder or decoder LayerNorm
        max_len=num(hf, "max_position_embeddings"),
        positions="sinusoidal",
        pos_layout="split",
        logit_bias=True,
        ban_pad=True,
    )


network_config = marian_config  # the name every family module gives it (prunelab.hf.export)


def key_map(enc_layers: int, dec_layers: int) -> dict[str, str]:
    """HF key (without the `model.` prefix; `final_logits_bias` is outside it) -> prunelab key."""
    return {"shared.weight": "embed.weight", "final_logits_bias": "logit_bias", **layer_key_map(enc_layers, dec_layers)}


def load_hf_marian(path: str | Path, weights: bool = True, **overrides: Any) -> Transformer:
    """A local MarianMT folder (config.json + model.safetensors or pytorch_model.bin) -> a Transformer computing
    the same logits (eval mode, fp32) and, with prunelab's decoding, the same greedy translations as HF's generate.

    `overrides`: training settings among OVERRIDABLE (e.g. dropout=0.0) that replace the checkpoint's.
    `weights=False`: only config.json is read (a folder without weights, such as a run's copy of its source): the
    same network with fresh weights, for a checkpoint to fill."""
    _, cfg, state = read_family(path, marian_config, weights, overrides)
    if state is None:
        return with_generation(Transformer(cfg), path)

    names, shown = file_names(path, state)  # `model.` taken off (a bare MarianModel file has none)
    take_shared(path, "marian", state, names, TIED_COPIES)
    # The sinusoid tables are recomputed; when the file has them they must agree with ours.
    table = sinusoidal_positions(cfg.max_len, cfg.d_model, cfg.pos_layout)
    for n in POSITION_TABLES:
        if n in names:
            check_table(path, shown + n, state[names.pop(n)], table, "sin in the first d/2 columns, cos in the last")

    mapping = key_map(cfg.enc_layers, cfg.dec_layers)
    if "final_logits_bias" not in names:  # HF too loads a file without it (a bare MarianModel) with zeros
        mapping.pop("final_logits_bias")
    account_for_keys(path, "marian", names, mapping, shown=lambda n: shown + n)

    if "final_logits_bias" in mapping:  # (1, V) in HF files, a (V,) buffer here
        final_logits_bias(path, state, names["final_logits_bias"], cfg.vocab_size)
    # without final_logits_bias in the file the bias stays at zero, as HF loads it
    return with_generation(copy_weights(Transformer(cfg), state, names, mapping, path, keep=("logit_bias",)), path)


build_hf_marian = hydra_entry(marian_config, load_hf_marian)  # Hydra: model=hf model.path=DIR (and model=hf_marian)


load, build = load_hf_marian, build_hf_marian  # the Family protocol's names (prunelab.hf.family)


def export_folder(
    model: Transformer,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Export (prunelab.hf.export): (config.json, tensors under MarianMTModel's keys) of the effective state: `model.`
    + the import's keys, final_logits_bias (1, V) outside it, and lm_head.weight, the tied output projection (a
    copy of the shared embedding)."""
    no_labels(labels)
    mapping = key_map(cfg.enc_layers, cfg.dec_layers)
    tensors = rename_keys(state, {k if k == "final_logits_bias" else "model." + k: v for k, v in mapping.items()})
    tensors["final_logits_bias"] = tensors["final_logits_bias"].reshape(1, -1)
    tensors["lm_head.weight"] = tensors["model.shared.weight"].clone()
    return dict(hf), tensors
