"""T5 (v1.0), T5 v1.1, Flan-T5 and mT5 checkpoints (config.json `model_type` "t5" or "mt5") in and out of
prunelab's encoder-decoder Transformer.

What they are, in TransformerConfig terms (Raffel et al. 2020):
- RMS norm without a bias (T5LayerNorm: no mean subtracted, eps `layer_norm_epsilon`), pre-norm, a final norm on
  each stack; no biases in any Linear;
- no absolute positions: a bucketed relative position bias (`positions="relative"`, `relative_attention_num_buckets`
  and `relative_attention_max_distance`) added to the attention logits, bidirectional in the encoder and causal in
  the decoder, one table per stack stored in its first layer and shared by all of its layers (prunelab's
  `enc_rel_bias`, `dec_rel_bias`); cross-attention has none;
- attention logits not scaled by 1/sqrt(d_kv) (`attn_scale=1.0`), heads of width d_kv (`head_dim`, which need not be
  d_model / num_heads);
- feed-forward `feed_forward_proj`: ReLU (v1.0: wi, wo) or gated (v1.1, mT5: act(wi_0 x) * wi_1 x, with gelu_new,
  the tanh GELU, for "gated-gelu"), prunelab's fc1 (= wi or wi_0), fc3 (= wi_1), fc2 (= wo);
- embeddings not scaled; the decoder starts from pad (decoder_start_token_id 0), EOS is 1;
- the output: the decoder's states x d_model^-0.5 when the model scales them (T5 v1.0: `tie_word_embeddings` not
  false; transformers 5 writes its decision as `scale_decoder_outputs`), unscaled otherwise (v1.1, mT5), through
  the tied embedding or, where config.json says `tie_word_embeddings: false` (v1.1, Flan-T5 and mT5 as Google
  released them), the file's own `lm_head.weight` (prunelab's separate `lm_head`; a file without one gets a copy of
  the embedding). transformers 5 always ties T5's output projection and rewrites the flag as true when it saves:
  its own files import tied, and an export of an untied model keeps `lm_head.weight`, which transformers 4 reads.

umT5 (a bias table in every layer) is another network and is refused by the registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import (
    HF_ACTIVATIONS,
    no_labels,
    num,
    read_family,
    recorded_layers,
    rename_keys,
)
from prunelab.hf.generation import imported, with_generation
from prunelab.hf.seq2seq import file_names, hydra_entry, take_shared
from prunelab.models.transformer import Transformer, TransformerConfig

MODEL_TYPES = ("t5", "mt5")
MODEL_CLASS = Transformer
TASK = "translation"
ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration"}
FF_WIDTH_KEYS = {t: ("d_ff",) for t in MODEL_TYPES}
LAYER_COUNT_KEYS = {t: {"enc": ("num_layers",), "dec": ("num_decoder_layers",)} for t in MODEL_TYPES}
FAMILY_CAPABILITIES = {t: ("import", "export", "heads", "oneshot", "structured", "generation") for t in MODEL_TYPES}
FAMILY_CUTS = {t: ("heads", "neurons", "layers", "sublayers") for t in MODEL_TYPES}

# a copy of the decoder's table that old files store in the cross-attention of its first layer: never read
DROPPED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
NO_POSITION_LIMIT = 1 << 15  # relative positions have no table: only the memory of a long sequence limits it


def feed_forward(hf: dict[str, Any]) -> tuple[bool, str]:
    """config.json's `feed_forward_proj` ("relu", "gated-gelu", "gated-silu", ...) -> (gated, prunelab activation),
    read as transformers' T5Config reads it (gated-gelu is the tanh GELU, gelu_new)."""
    proj = str(hf.get("feed_forward_proj", "relu" if hf.get("model_type") == "t5" else "gated-gelu"))
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise UserError(f"config.json's feed_forward_proj={proj!r} is not `ACT` or `gated-ACT`")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]
    if act not in HF_ACTIVATIONS:
        raise UserError(f"activation {act!r} of the checkpoint is not supported (supported: {sorted(HF_ACTIVATIONS)})")
    return len(parts) == 2, HF_ACTIVATIONS[act]


def scales_output(hf: dict[str, Any]) -> bool:
    """Whether the decoder's states are multiplied by d_model^-0.5 before the output projection: T5 v1.0 (the
    original's tied output), not v1.1 nor mT5 (transformers' MT5 never scales)."""
    if hf.get("model_type") == "mt5":
        return False
    if "scale_decoder_outputs" in hf:  # transformers 5 writes what it decided
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def t5_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json of a T5 or mT5 model -> the TransformerConfig of the same network (module doc)."""
    if hf.get("model_type") not in MODEL_TYPES:
        raise UserError(f"model_type {hf.get('model_type')!r} is not a T5 checkpoint (model_type 't5' or 'mt5')")
    gated, act = feed_forward(hf)
    d = num(hf, "d_model")
    enc = num(hf, "num_layers")
    dec = hf.get("num_decoder_layers") or enc
    pad, start = num(hf, "pad_token_id"), hf.get("decoder_start_token_id")
    rate = hf.get("dropout_rate", 0.1)
    return TransformerConfig(
        vocab_size=num(hf, "vocab_size"),
        d_model=d,
        n_heads=num(hf, "num_heads"),
        head_dim=num(hf, "d_kv"),
        d_ff=num(hf, "d_ff"),
        enc_layers=enc,
        dec_layers=dec,
        layer_numbers=recorded_layers(hf, enc=enc, dec=dec),
        dropout=rate,
        attn_dropout=rate,
        activation_dropout=rate,
        pre_norm=True,
        max_len=NO_POSITION_LIMIT,
        pad_id=pad,
        norm="rms",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=act,
        ffn="glu" if gated else "mlp",
        qkv_bias=False,
        out_bias=False,
        ff_bias=False,
        embed_scale=False,
        positions="relative",
        rel_buckets=hf.get("relative_attention_num_buckets", 32),
        rel_max_distance=hf.get("relative_attention_max_distance", 128),
        attn_scale=1.0,
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        logit_scale=d**-0.5 if scales_output(hf) else 1.0,
        decoder_start_id=pad if start is None else start,
    )


network_config = t5_config


def key_map(cfg: TransformerConfig) -> dict[str, str]:
    """HF key (T5 files have no `model.` prefix) -> prunelab key."""
    m = {
        "shared.weight": "embed.weight",
        "encoder.final_layer_norm.weight": "enc_norm.weight",
        "decoder.final_layer_norm.weight": "dec_norm.weight",
    }
    if cfg.enc_layers:
        m["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = "enc_rel_bias.weight"
    if cfg.dec_layers:
        m["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = "dec_rel_bias.weight"
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = "lm_head.weight"
    ff = {"wi_0": "fc1", "wi_1": "fc3", "wo": "fc2"} if cfg.ffn == "glu" else {"wi": "fc1", "wo": "fc2"}
    for side, ours, n in (("encoder", "enc", cfg.enc_layers), ("decoder", "dec", cfg.dec_layers)):
        subs = [("SelfAttention", "sa")] + ([("EncDecAttention", "ea")] if side == "decoder" else [])
        for i in range(n):
            h, e = f"{side}.block.{i}.layer", f"{ours}.{i}"
            for j, (theirs, mine) in enumerate(subs):
                for a, b in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
                    m[f"{h}.{j}.{theirs}.{a}.weight"] = f"{e}.{mine}.{b}.weight"
                m[f"{h}.{j}.layer_norm.weight"] = f"{e}.{mine}_res.norm.weight"
            j = len(subs)
            for a, b in ff.items():
                m[f"{h}.{j}.DenseReluDense.{a}.weight"] = f"{e}.ff.{b}.weight"
            m[f"{h}.{j}.layer_norm.weight"] = f"{e}.ff_res.norm.weight"
    return m


def load_hf_t5(path: str | Path, weights: bool = True, **overrides: Any) -> Transformer:
    """A local T5 / mT5 folder -> a Transformer computing the same logits (eval mode, fp32) and, with the
    checkpoint's generation settings, the same outputs as `generate`."""
    hf, cfg, state = read_family(path, t5_config, weights, overrides)
    if state is None:
        return with_generation(Transformer(cfg), path)
    names, _ = file_names(path, state, prefix="")
    copies = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    take_shared(path, hf["model_type"], state, names, copies if not cfg.tie_embeddings else (*copies, "lm_head.weight"))
    if not cfg.tie_embeddings and "lm_head.weight" not in names:  # transformers ties it to the embedding then
        state["lm_head.weight (the embedding)"] = state[names["shared.weight"]]
        names["lm_head.weight"] = "lm_head.weight (the embedding)"
    for n in DROPPED:
        names.pop(n, None)
    mapping = key_map(cfg)
    return imported(Transformer(cfg), path, hf["model_type"], state, names, mapping)


build_hf_t5 = hydra_entry(network_config, load_hf_t5)  # Hydra: model=hf model.path=DIR


load, build = load_hf_t5, build_hf_t5


def export_folder(
    model: Transformer,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, tensors under T5ForConditionalGeneration's keys). The relative bias tables go to the first layer
    of each stack left (a layer removed before it leaves them to the next)."""
    no_labels(labels)
    return dict(hf), rename_keys(state, key_map(cfg))
