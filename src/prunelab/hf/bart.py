"""BART and mBART (mBART-25, mBART-50) checkpoints in and out of prunelab's encoder-decoder Transformer.

What they are, in TransformerConfig terms (both: one vocabulary shared by source, target and the tied output
projection, `final_logits_bias`, LayerNorm eps 1e-5, the fairseq-named layers of prunelab.hf.seq2seq):

    BART   post-norm, learned positions per stack whose table starts 2 rows in (`position_shift=2`: position p
           reads row p + 2), an embedding LayerNorm per stack (`layernorm_embedding`), GELU, no final norms,
           embeddings x sqrt(d) only with `scale_embedding`.
    mBART  the same, pre-norm, with a final LayerNorm on each stack (`encoder.layer_norm`, `decoder.layer_norm`),
           and usually `scale_embedding`. mBART-50's language codes are tokens: the source is [src_code] X </s>,
           the target [tgt_code] Y </s>, the decoder starts from </s> (decoder_start_token_id 2) and generation
           forces the target code first (forced_bos_token_id; prunelab.data sets it from data.tgt_lang).

Each stack has its own position table and embedding LayerNorm (`stack_embeddings`): the encoder's are prunelab's
`pos_embed` and `embed_norm`, the decoder's `dec_pos_embed` and `dec_embed_norm`. transformers' BART code ignores the
fairseq switches some old config.json files still carry (normalize_before, add_final_layer_norm, ...): so does
this import, the class decides. Encoder and decoder of different widths or head counts are refused."""

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
    wb,
)
from prunelab.hf.generation import with_generation
from prunelab.hf.seq2seq import (
    check_same,
    fairseq_shape,
    file_names,
    final_logits_bias,
    hydra_entry,
    layer_key_map,
    take_shared,
)
from prunelab.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("bart", "mbart")
MODEL_CLASS = Transformer
TASK = "translation"
ARCHITECTURES = {"bart": "BartForConditionalGeneration", "mbart": "MBartForConditionalGeneration"}
FF_WIDTH_KEYS = {t: ("encoder_ffn_dim", "decoder_ffn_dim") for t in MODEL_TYPES}
LAYER_COUNT_KEYS = {
    t: {"enc": ("encoder_layers", "num_hidden_layers"), "dec": ("decoder_layers",)} for t in MODEL_TYPES
}
FAMILY_CAPABILITIES = {t: ("import", "export", "heads", "oneshot", "structured", "generation") for t in MODEL_TYPES}
FAMILY_CUTS = {"bart": ("heads", "neurons", "layers"), "mbart": ("heads", "neurons", "layers", "sublayers")}

POSITION_SHIFT = 2  # BartLearnedPositionalEmbedding's offset: rows 0 and 1 of the table are never read
TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")


def bart_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a BART or mBART model -> the TransformerConfig of the same network (see the module doc)."""
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise UserError(f"model_type {kind!r} is not a BART checkpoint (model_type 'bart' or 'mbart')")
    check_same(hf, [("encoder_attention_heads", "decoder_attention_heads")], "head count")
    check_same(hf, [("encoder_ffn_dim", "decoder_ffn_dim")], "feed-forward width")
    if not hf.get("tie_word_embeddings", True):
        raise UserError(f"a {kind} checkpoint with tie_word_embeddings=false: prunelab ties the output projection")
    return TransformerConfig(
        **fairseq_shape(hf, act="gelu", attn_dropout=0.0, scale=False, start="eos_token_id"),
        pre_norm=kind == "mbart",  # mBART: pre-norm with a final LayerNorm per stack; BART: post-norm
        max_len=num(hf, "max_position_embeddings") + POSITION_SHIFT,  # the table's rows
        position_shift=POSITION_SHIFT,
        positions="learned",
        embed_norm=True,
        stack_embeddings=True,
        logit_bias=True,
    )


network_config = bart_config


def key_map(cfg: TransformerConfig, kind: str) -> dict[str, str]:
    """HF key (without `model.`; `final_logits_bias` is outside it) -> prunelab key."""
    m = {
        "shared.weight": "embed.weight",
        "final_logits_bias": "logit_bias",
        "encoder.embed_positions.weight": "pos_embed.weight",
        "decoder.embed_positions.weight": "dec_pos_embed.weight",
        **wb("encoder.layernorm_embedding", "embed_norm"),
        **wb("decoder.layernorm_embedding", "dec_embed_norm"),
        **layer_key_map(cfg.enc_layers, cfg.dec_layers),
    }
    if kind == "mbart":
        m.update(wb("encoder.layer_norm", "enc_norm"))
        m.update(wb("decoder.layer_norm", "dec_norm"))
    return m


def load_hf_bart(path: str | Path, weights: bool = True, **overrides: Any) -> Transformer:
    """A local BART or mBART folder -> a Transformer computing the same logits (eval mode, fp32) and, with the
    checkpoint's generation settings (`model.generation`), the same translations as `generate`."""
    hf, cfg, state = read_family(path, bart_config, weights, overrides)
    if state is None:
        return with_generation(Transformer(cfg), path)
    kind = hf["model_type"]
    names, shown = file_names(path, state)
    take_shared(path, kind, state, names, TIED_COPIES)
    mapping = key_map(cfg, kind)
    if "final_logits_bias" not in names:  # transformers loads a file without it with zeros too
        mapping.pop("final_logits_bias")
    account_for_keys(path, kind, names, mapping, shown=lambda n: shown + n)
    if "final_logits_bias" in mapping:
        final_logits_bias(path, state, names["final_logits_bias"], cfg.vocab_size)
    model = copy_weights(Transformer(cfg), state, names, mapping, path, keep=("logit_bias",))
    return with_generation(model, path)


build_hf_bart = hydra_entry(bart_config, load_hf_bart)  # Hydra: model=hf model.path=DIR


load, build = load_hf_bart, build_hf_bart


def export_folder(
    model: Transformer,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under *ForConditionalGeneration's keys): `model.` + the import's keys, and
    final_logits_bias (1, V) outside it; the tied copies are left to transformers, as its save_pretrained does."""
    no_labels(labels)
    mapping = key_map(cfg, hf["model_type"])
    tensors = rename_keys(state, {k if k == "final_logits_bias" else "model." + k: v for k, v in mapping.items()})
    tensors["final_logits_bias"] = tensors["final_logits_bias"].reshape(1, -1)
    return dict(hf), tensors
