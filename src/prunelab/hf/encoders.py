"""Import a Hugging Face encoder checkpoint (BERT, RoBERTa, ELECTRA discriminator, DistilBERT) into prunelab's
gated classifier, so that its heads and sub-layers can be studied and pruned under prunelab's addresses
(`enc.{i}.sa.h{j}` is head j of HF layer i: the rows j*hs ... j*hs+hs-1 of Q/K/V on both sides).

nanoGPT's `from_pretrained` is the model: build prunelab's own network from the checkpoint's config.json, map
every key of the file to a prunelab key by name, and copy tensor by tensor with the shapes asserted. Every key
is accounted for: mapped, or in the explicit list of keys dropped on purpose (buffers, pre-training heads), or an
error naming it; every prunelab parameter is filled (the gate and head_ids buffers stay at their defaults).
No transposes: both sides use nn.Linear with separate Q/K/V. ELECTRA-small's narrower embeddings and their
`embeddings_project` map to `embed_dim` and `embed_proj`.

The file is read with safetensors or `torch.load(weights_only=True)`: `transformers` is not needed here (only
its tests use it to build reference models). Classification layers, mapped onto prunelab's pooler + head:

    BERT        pooler.dense (tanh)      -> pooler,   classifier          -> head
    RoBERTa     classifier.dense (tanh)  -> pooler,   classifier.out_proj -> head
    ELECTRA     classifier.dense (GELU)  -> pooler,   classifier.out_proj -> head
    DistilBERT  pre_classifier (ReLU)    -> pooler,   classifier          -> head

A checkpoint without classification layers (a bare *Model body) gets what transformers' *ForSequenceClassification
builds on it: the family's dense layer + activation and a head, initialised as transformers does (N(0,
initializer_range), bias 0), except that a bare BertModel keeps its pretrained pooler; RoBERTa's `pooler.*` (which
its classifier does not use) is dropped. So the fine-tuned model can always be exported (`export_folder`).
The classification layers drop out as transformers' do: RoBERTa's and ELECTRA's before their dense layer and after
its activation, BERT's and DistilBERT's after it, at `classifier_dropout` (DistilBERT: `seq_classif_dropout`) when
the config sets it, else the hidden dropout (`head_dropout`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from prunelab.errors import UserError
from prunelab.hf.checkpoint import (
    BITMASK_HINT,
    HF_ACTIVATIONS,
    account_for_keys,
    check_data_fits,
    copy_weights,
    fresh_linear,
    num,
    read_family,
    recorded_layers,
    rename_keys,
    wb,
)
from prunelab.models.classifier import TransformerClassifier
from prunelab.models.transformer import TransformerConfig

FAMILIES = ("bert", "roberta", "electra", "distilbert")
MODEL_TYPES = FAMILIES
MODEL_CLASS = TransformerClassifier  # what these checkpoints are imported into
# The class each family is exported as (config.json's `architectures`).
ARCHITECTURES = {
    "bert": "BertForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "electra": "ElectraForSequenceClassification",
    "distilbert": "DistilBertForSequenceClassification",
}
# config.json's feed-forward width, set on export when every feed-forward kept the same number of neurons
FF_WIDTH_KEYS = {
    "bert": ("intermediate_size",),
    "roberta": ("intermediate_size",),
    "electra": ("intermediate_size",),
    "distilbert": ("hidden_dim",),
}
# config.json's layer count, lowered on export when whole layers were removed (DistilBERT's n_layers is also read
# as num_hidden_layers)
TASK = "classification"
# the Family protocol's tables (prunelab.hf.family): generation does not apply to a classifier
FAMILY_CAPABILITIES = {t: ("import", "export", "heads", "oneshot", "structured") for t in MODEL_TYPES}
FAMILY_CUTS = {t: ("heads", "neurons", "layers") for t in MODEL_TYPES}  # post-norm: no single sub-layer
LAYER_COUNT_KEYS = {
    "bert": {"enc": ("num_hidden_layers",)},
    "roberta": {"enc": ("num_hidden_layers",)},
    "electra": {"enc": ("num_hidden_layers",)},
    "distilbert": {"enc": ("n_layers", "num_hidden_layers")},
}

# Keys (after the family prefix is taken off) that are dropped on purpose, in every family: position/token-type
# id buffers that older files saved, and the pre-training heads (MLM, NSP, replaced-token detection, generator).
DROPPED = (
    r"embeddings\.position_ids",
    r"embeddings\.token_type_ids",
    r"cls\..*",  # BERT MLM/NSP heads
    r"lm_head\..*",  # RoBERTa MLM head
    r"discriminator_predictions\..*",  # ELECTRA replaced-token detection head
    r"generator_predictions\..*",
    r"generator_lm_head\..*",
    r"vocab_transform\..*",  # DistilBERT MLM head
    r"vocab_layer_norm\..*",
    r"vocab_projector\..*",
)


def encoder_config(hf: dict[str, Any]) -> TransformerConfig:
    """config.json -> the TransformerConfig of the same network: post-norm, no final LayerNorm, learned
    positions, an embedding LayerNorm, no embedding scale, no dropout inside the feed-forward."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"model_type {family!r} cannot be imported (supported: {', '.join(FAMILIES)})")
    if hf.get("position_embedding_type") not in (None, "absolute"):
        raise UserError(f"position_embedding_type={hf['position_embedding_type']!r} is not supported (only absolute)")
    if hf.get("problem_type") in ("regression", "multi_label_classification"):
        raise UserError(f"problem_type={hf['problem_type']!r}: prunelab's classifier is single-label classification")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise UserError(f"a {family} decoder (is_decoder / add_cross_attention) cannot be imported as an encoder")
    if family == "distilbert":
        act = hf.get("activation", "gelu")
        d, d_ff, layers = num(hf, "dim"), num(hf, "hidden_dim"), num(hf, "n_layers")
        heads, eps, types = num(hf, "n_heads"), 1e-12, 0  # DistilBERT hard-codes eps=1e-12; no token types
        dropout, attn_dropout = hf.get("dropout", 0.1), hf.get("attention_dropout", 0.1)
    else:
        act = hf.get("hidden_act", "gelu")
        d, d_ff = num(hf, "hidden_size"), num(hf, "intermediate_size")
        layers, heads = num(hf, "num_hidden_layers"), num(hf, "num_attention_heads")
        eps, types = hf.get("layer_norm_eps", 1e-12), hf.get("type_vocab_size", 2)
        dropout = hf.get("hidden_dropout_prob", 0.1)
        attn_dropout = hf.get("attention_probs_dropout_prob", 0.1)
    # ELECTRA-small's embeddings are narrower than its hidden states, projected up by `embeddings_project`
    embed_dim = hf.get("embedding_size", d) if family == "electra" else d
    if act not in HF_ACTIVATIONS:
        raise UserError(f"activation {act!r} of the checkpoint is not supported (supported: {sorted(HF_ACTIVATIONS)})")
    pad_id = hf.get("pad_token_id")
    if pad_id is None:
        pad_id = 0
    return TransformerConfig(
        vocab_size=num(hf, "vocab_size"),
        d_model=d,
        n_heads=heads,
        d_ff=d_ff,
        enc_layers=layers,
        dec_layers=0,
        layer_numbers=recorded_layers(hf, enc=layers),  # a prunelab export that took layers out
        dropout=dropout,
        attn_dropout=attn_dropout,
        activation_dropout=0.0,  # HF encoders have no dropout between the two feed-forward layers
        pre_norm=False,  # post-norm: LN(x + dropout(f(x))), and so no final encoder LayerNorm
        max_len=num(hf, "max_position_embeddings"),
        pad_id=pad_id,
        norm_eps=eps,
        activation=HF_ACTIVATIONS[act],
        embed_scale=False,
        positions="learned",
        # RoBERTa numbers the real tokens from pad+1 and puts every pad at pad (fairseq's make_positions)
        position_offset=pad_id + 1 if family == "roberta" else 0,
        type_vocab_size=types,
        embed_norm=True,
        embed_dim=embed_dim,
    )


network_config = encoder_config  # the name every family module gives it (prunelab.hf.export)


def key_map(family: str, layers: int, embed_proj: bool = False) -> dict[str, str]:
    """HF key (without the `bert.`/`roberta.`/... prefix) -> prunelab key, for the encoder itself."""
    m = {
        "embeddings.word_embeddings.weight": "embed.weight",
        "embeddings.position_embeddings.weight": "pos_embed.weight",
        **wb("embeddings.LayerNorm", "embed_norm"),
    }
    if family != "distilbert":
        m["embeddings.token_type_embeddings.weight"] = "type_embed.weight"
    if embed_proj:
        m.update(wb("embeddings_project", "embed_proj"))
    for i in range(layers):
        e = f"enc.{i}"
        if family == "distilbert":
            h = f"transformer.layer.{i}"
            parts = {
                "attention.q_lin": "sa.q_proj",
                "attention.k_lin": "sa.k_proj",
                "attention.v_lin": "sa.v_proj",
                "attention.out_lin": "sa.out_proj",
                "sa_layer_norm": "sa_res.norm",
                "ffn.lin1": "ff.fc1",
                "ffn.lin2": "ff.fc2",
                "output_layer_norm": "ff_res.norm",
            }
        else:
            h = f"encoder.layer.{i}"
            parts = {
                "attention.self.query": "sa.q_proj",
                "attention.self.key": "sa.k_proj",
                "attention.self.value": "sa.v_proj",
                "attention.output.dense": "sa.out_proj",
                "attention.output.LayerNorm": "sa_res.norm",
                "intermediate.dense": "ff.fc1",
                "output.dense": "ff.fc2",
                "output.LayerNorm": "ff_res.norm",
            }
        for theirs, ours in parts.items():
            m.update(wb(f"{h}.{theirs}", f"{e}.{ours}"))  # Linear and LayerNorm alike: weight and bias
    return m


# The classification layers of each family's *ForSequenceClassification: (its dense layer's key, the activation
# after it, the head's key). transformers builds them on every body, and so does the import: from the file when it
# has them (BERT's pooler also in a bare BertModel file), else fresh (`fresh_linear`).
CLASSIFIERS = {
    "bert": ("pooler.dense", "tanh", "classifier"),
    "roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "electra": ("classifier.dense", "gelu", "classifier.out_proj"),
    "distilbert": ("pre_classifier", "relu", "classifier"),
}
# Keys of a *ForSequenceClassification file outside the family prefix (the classification layers, except BERT's
# `bert.pooler.dense`): every other key is `bert.`/`roberta.`/... + the key_map / CLASSIFIERS name.
UNPREFIXED = ("classifier", "pre_classifier")
# Keys of one family that its *ForSequenceClassification does not load, dropped on purpose (on top of DROPPED):
# RoBERTa's pooler, which RobertaModel saves and many hub classifiers still store, but whose classifier has its own
# dense layer.
FAMILY_DROPPED = {"roberta": (r"pooler\..*",)}


def dropped_keys(family: str) -> re.Pattern[str]:
    """The keys (family prefix taken off) of a `family` file that are dropped on purpose."""
    return re.compile("|".join(f"(?:{d})" for d in (*DROPPED, *FAMILY_DROPPED.get(family, ()))))


def head_dropout(hf: dict[str, Any], dropout: float) -> float:
    """The dropout of the family's classification layers: `classifier_dropout` when the config sets it (BERT,
    RoBERTa, ELECTRA), DistilBERT's `seq_classif_dropout`, else the model's own `dropout` (hidden_dropout_prob,
    or the value a run set instead), as transformers' *ForSequenceClassification takes it."""
    value = hf.get("seq_classif_dropout") if hf["model_type"] == "distilbert" else hf.get("classifier_dropout")
    return float(value) if value is not None else dropout


def new_classifier(cfg: TransformerConfig, hf: dict[str, Any], num_labels: int) -> TransformerClassifier:
    """The classifier the family's *ForSequenceClassification is, for `num_labels` classes: [CLS] -> its dense
    layer + activation (prunelab's pooler) -> the head, those two initialised as transformers initialises them
    (N(0, initializer_range), bias 0); the encoder's weights are for the caller to fill."""
    if num_labels < 2:
        raise UserError(f"a classifier needs at least 2 labels, got {num_labels} (regression is not supported)")
    family = hf["model_type"]
    model = TransformerClassifier(
        cfg,
        num_labels,
        pooling="cls",
        pooler=CLASSIFIERS[family][1],
        head_dropout=head_dropout(hf, cfg.dropout),
        dropout_before_pooler=family in ("roberta", "electra"),
    )
    std = float(hf.get("initializer_range") or 0.02)
    assert model.pooler is not None
    fresh_linear(model.pooler, std)
    fresh_linear(model.head, std)
    return model


def load_hf_encoder(
    path: str | Path, num_labels: int | None = None, weights: bool = True, **overrides: Any
) -> TransformerClassifier:
    """A local HF checkpoint folder -> TransformerClassifier computing the same logits (eval mode, fp32).

    With a classification head in the file it is used (its number of labels; `num_labels`, if given, must
    agree); without one, the family's classification layers (CLASSIFIERS), fresh unless the file has them, for
    `num_labels` classes. `overrides`: training settings among OVERRIDABLE (e.g. dropout=0.0) that replace the
    checkpoint's. `weights=False`: only config.json is read (a folder without weights, such as a run's copy of its
    source): the same network with fresh weights, for a checkpoint to fill; it needs `num_labels`."""
    hf, cfg, state = read_family(path, encoder_config, weights, overrides)
    if state is None:
        if num_labels is None:
            raise UserError(f"{path}: building the network without its weights needs num_labels")
        return new_classifier(cfg, hf, num_labels)
    family = hf.get("model_type")

    # Normalise the names: take off the family prefix (a bare *Model file has none), and rename TF-era
    # LayerNorm parameters gamma/beta to weight/bias.
    prefix = f"{family}."
    names: dict[str, str] = {}  # normalised name -> name in the file, for messages
    for k in state:
        n = k.removeprefix(prefix)
        n = re.sub(r"\.gamma$", ".weight", n) if "LayerNorm" in n or "layer_norm" in n else n
        n = re.sub(r"\.beta$", ".bias", n) if "LayerNorm" in n or "layer_norm" in n else n
        if n in names:
            raise UserError(f"{path}: keys {names[n]!r} and {k!r} both name {n!r}")
        names[n] = k

    mapping = key_map(family, cfg.enc_layers, embed_proj=cfg.embed_dim != cfg.d_model)
    dense_key, _, head_key = CLASSIFIERS[family]
    has_head = f"{head_key}.weight" in names
    if has_head or f"{dense_key}.weight" in names:  # a bare BertModel keeps its pretrained pooler
        mapping.update(wb(dense_key, "pooler"))
    if has_head:
        mapping.update(wb(head_key, "head"))
        n_head = state[names[f"{head_key}.weight"]].shape[0]
        if num_labels is not None and num_labels != n_head:
            raise UserError(
                f"{path}: its classification head has {n_head} labels, but {num_labels} were asked for "
                "(a checkpoint without its head gets a fresh one)"
            )
        num_labels = n_head
    elif num_labels is None:
        raise UserError(f"{path} has no classification head: give num_labels for a fresh one")

    # Account for every key of the file: mapped, or dropped on purpose, or an error naming it.
    # name a missing key as the file would: under the prefix if the file uses one (the head keys never are)
    shown = prefix if any(k.startswith(prefix) for k in state) else ""
    account_for_keys(
        path, family, names, mapping, dropped_keys(family), lambda n: n if n.startswith(UNPREFIXED) else shown + n
    )
    try:
        model = new_classifier(cfg, hf, num_labels)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    fresh = {f"{m}.{p}" for m in ("pooler", "head") for p in ("weight", "bias")} - set(mapping.values())
    return copy_weights(model, state, names, mapping, path, keep=fresh)


def build_hf_encoder(
    vocab_size: int, pad_id: int, num_classes: int, path: str, weights: bool = True, **overrides: Any
) -> TransformerClassifier:
    """Hydra entry point (`model=hf_encoder model.path=DIR`): the checkpoint as a classifier for the data's classes.

    The data are tokenized with the checkpoint's own tokenizer (see check_data_fits). `weights=False`: config.json
    alone (load_hf_encoder), as `load_run` rebuilds a run from its copy of the source."""
    check_data_fits(path, encoder_config, vocab_size, pad_id)  # before the weights are read
    return load_hf_encoder(path, num_classes, weights, **overrides)


def export_folder(
    model: TransformerClassifier,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    labels: Sequence[str] | None,
    cfg: TransformerConfig,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Export (prunelab.hf.export): (config.json with the model's labels, tensors under the keys of the family's
    *ForSequenceClassification file) of the effective state."""
    family = hf["model_type"]
    pooler_key, pooler_act, head_key = CLASSIFIERS[family]
    if model.pooling != "cls":
        raise UserError(f"the classifier pools with {model.pooling!r}: a {family} classifier reads [CLS]")
    if model.pooler is None or model.pooler_activation != pooler_act:
        raise UserError(
            f"the classifier has {'no pooler' if model.pooler is None else f'a {model.pooler_activation} pooler'}, "
            f"a {ARCHITECTURES[family]} has a Linear + {pooler_act} before its head: it cannot be written as one; "
            f"{BITMASK_HINT}"
        )
    mapping = key_map(family, cfg.enc_layers, embed_proj=model.embed_proj is not None)
    mapping.update(wb(pooler_key, "pooler"))
    mapping.update(wb(head_key, "head"))
    prefix = f"{family}."
    tensors = rename_keys(state, {k if k.startswith(UNPREFIXED) else prefix + k: v for k, v in mapping.items()})
    return label_config(hf, model.num_classes, labels), tensors


def label_config(hf: dict[str, Any], n: int, labels: Sequence[str] | None) -> dict[str, Any]:
    """config.json with num_labels, id2label and label2id for the model's n classes (`labels`, index = class id;
    default: the source's when their number fits, else LABEL_i)."""
    if labels is not None:
        names = [str(x) for x in labels]
        if len(names) != n:
            raise UserError(f"{len(names)} label names for a classifier with {n} classes")
        if len(set(names)) != n:
            raise UserError(f"label names must be distinct: {names}")
    else:
        old = hf.get("id2label") or {}
        names = [str(old[str(i)]) for i in range(n)] if len(old) == n and all(str(i) in old for i in range(n)) else []
        if len(set(names)) != n:
            names = [f"LABEL_{i}" for i in range(n)]
    config = dict(hf)
    config.update(num_labels=n, id2label=dict(enumerate(names)), label2id={x: i for i, x in enumerate(names)})
    return config


def load(
    path: str | Path, weights: bool = True, num_labels: int | None = None, **overrides: Any
) -> TransformerClassifier:
    """The Family protocol's `load` (load_hf_encoder)."""
    return load_hf_encoder(path, num_labels, weights, **overrides)


build = build_hf_encoder
