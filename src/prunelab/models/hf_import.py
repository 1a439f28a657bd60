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

Training-time differences that do not change eval outputs: RoBERTa's and ELECTRA's heads apply dropout before
their dense layer too, and HF's `classifier_dropout` / DistilBERT's `seq_classif_dropout` are replaced by the
model's `dropout` after the pooler. A checkpoint without classification layers gets a fresh head (and keeps its
BERT/RoBERTa `pooler.dense` when the file has one)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError
from prunelab.models.classifier import TransformerClassifier
from prunelab.models.transformer import Transformer, TransformerConfig

FAMILIES = ("bert", "roberta", "electra", "distilbert")

# HF `hidden_act` / `activation` -> prunelab activation. "gelu" is the exact erf GELU in transformers.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

# Keys (after the family prefix is taken off) that are dropped on purpose: position/token-type id buffers
# that older files saved, and the pre-training heads (MLM, NSP, replaced-token detection, generator).
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
_DROPPED = re.compile("|".join(f"(?:{d})" for d in DROPPED))

# TransformerConfig fields a caller may set on top of the checkpoint's (training choices, not the architecture).
OVERRIDABLE = ("dropout", "attn_dropout", "activation_dropout", "layerdrop", "gated")


# What is fetched of a hub checkpoint: config, tokenizer files and the PyTorch weights (not TF/Flax/ONNX copies).
HUB_FILES = ["*.json", "*.txt", "*.model", "*.spm", "model.safetensors", "pytorch_model.bin"]


def resolve_checkpoint(path: str | Path) -> Path:
    """`model.path` -> a local folder: the folder itself, or a hub id (`bert-base-uncased`,
    `Helsinki-NLP/opus-mt-en-de`) resolved through the Hugging Face cache (`huggingface_hub.snapshot_download`:
    downloaded once when the machine is online, read from the cache when it is not, e.g. HF_HUB_OFFLINE=1).
    One clear error when neither works."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    name = str(path)
    if folder.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise UserError(f"model folder not found: {folder}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(
            f"{name}: not a local folder, and reading hub ids needs huggingface_hub: pip install -e '.[hf]'"
        ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES))
    except Exception as e:  # offline and not cached, unknown id, ...: one line
        raise UserError(
            f"{name}: not a local folder, and not found on the Hugging Face hub or in its cache "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); download it first, e.g. "
            f"`hf download {name} --local-dir models/{name.rsplit('/', 1)[-1]}`, and set model.path to that folder"
        ) from e


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A HF model folder or hub id (resolve_checkpoint) -> (config.json as a dict, state dict with fp16/bf16 upcast
    to fp32)."""
    folder = resolve_checkpoint(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    config = json.loads((folder / "config.json").read_text())
    if (folder / "model.safetensors").is_file():
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError("reading model.safetensors needs the safetensors package: pip install -e '.[hf]'") from None
        state = load_file(str(folder / "model.safetensors"), device="cpu")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")
    # fp16 checkpoints (Marian-style conversions) are upcast: prunelab computes in fp32 unless told otherwise
    return config, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _num(hf: dict[str, Any], *names: str) -> Any:
    for n in names:
        if hf.get(n) is not None:
            return hf[n]
    raise UserError(f"config.json of a {hf.get('model_type')} model lacks {' / '.join(names)}")


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
        d, d_ff, layers = _num(hf, "dim"), _num(hf, "hidden_dim"), _num(hf, "n_layers")
        heads, eps, types = _num(hf, "n_heads"), 1e-12, 0  # DistilBERT hard-codes eps=1e-12; no token types
        dropout, attn_dropout = hf.get("dropout", 0.1), hf.get("attention_dropout", 0.1)
    else:
        act = hf.get("hidden_act", "gelu")
        d, d_ff = _num(hf, "hidden_size"), _num(hf, "intermediate_size")
        layers, heads = _num(hf, "num_hidden_layers"), _num(hf, "num_attention_heads")
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
        vocab_size=_num(hf, "vocab_size"),
        d_model=d,
        n_heads=heads,
        d_ff=d_ff,
        enc_layers=layers,
        dec_layers=0,
        dropout=dropout,
        attn_dropout=attn_dropout,
        activation_dropout=0.0,  # HF encoders have no dropout between the two feed-forward layers
        pre_norm=False,  # post-norm: LN(x + dropout(f(x))), and so no final encoder LayerNorm
        max_len=_num(hf, "max_position_embeddings"),
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


def _wb(hf: str, ours: str) -> dict[str, str]:
    """Both parameters of a Linear or LayerNorm."""
    return {f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"}


def key_map(family: str, layers: int, embed_proj: bool = False) -> dict[str, str]:
    """HF key (without the `bert.`/`roberta.`/... prefix) -> prunelab key, for the encoder itself."""
    m = {
        "embeddings.word_embeddings.weight": "embed.weight",
        "embeddings.position_embeddings.weight": "pos_embed.weight",
        **_wb("embeddings.LayerNorm", "embed_norm"),
    }
    if family != "distilbert":
        m["embeddings.token_type_embeddings.weight"] = "type_embed.weight"
    if embed_proj:
        m.update(_wb("embeddings_project", "embed_proj"))
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
            m.update(_wb(f"{h}.{theirs}", f"{e}.{ours}"))  # Linear and LayerNorm alike: weight and bias
    return m


# The classification layers of each family's *ForSequenceClassification: (pooler key, its activation, head key).
CLASSIFIERS = {
    "bert": ("pooler.dense", "tanh", "classifier"),
    "roberta": ("classifier.dense", "tanh", "classifier.out_proj"),
    "electra": ("classifier.dense", "gelu", "classifier.out_proj"),
    "distilbert": ("pre_classifier", "relu", "classifier"),
}
# Keys of a *ForSequenceClassification file outside the family prefix (the classification layers, except BERT's
# `bert.pooler.dense`): every other key is `bert.`/`roberta.`/... + the key_map / CLASSIFIERS name.
UNPREFIXED = ("classifier", "pre_classifier")


def load_hf_encoder(path: str | Path, num_labels: int | None = None, **overrides: Any) -> TransformerClassifier:
    """A local HF checkpoint folder -> TransformerClassifier computing the same logits (eval mode, fp32).

    With a classification head in the file it is used (its number of labels; `num_labels`, if given, must
    agree); without one, a fresh head for `num_labels` classes. `overrides`: training settings among OVERRIDABLE
    (e.g. dropout=0.0) that replace the checkpoint's."""
    hf, state = read_checkpoint(path)
    family = hf.get("model_type")
    cfg = encoder_config(hf)
    if bad := sorted(set(overrides) - set(OVERRIDABLE)):
        raise UserError(f"cannot override {bad} of an imported checkpoint (its shape comes from config.json)")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.__post_init__()

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
    pooler_key, pooler_act, head_key = CLASSIFIERS[family]
    has_head = f"{head_key}.weight" in names
    pooler = None
    if has_head or (family in ("bert", "roberta") and "pooler.dense.weight" in names):
        if not has_head:  # a bare BertModel/RobertaModel: keep its pre-trained pooler under a fresh head
            pooler_key = "pooler.dense"
        pooler = pooler_act
        mapping.update(_wb(pooler_key, "pooler"))
    if has_head:
        mapping.update(_wb(head_key, "head"))
        n_head = state[names[f"{head_key}.weight"]].shape[0]
        if num_labels is not None and num_labels != n_head:
            raise UserError(
                f"{path}: its classification head has {n_head} labels, but {num_labels} were asked for "
                "(a checkpoint without its head gets a fresh one)"
            )
        num_labels = n_head
    elif num_labels is None:
        raise UserError(f"{path} has no classification head: give num_labels for a fresh one")
    if num_labels < 2:
        raise UserError(f"{path}: a classifier needs at least 2 labels, got {num_labels} (regression is not supported)")

    # Account for every key of the file: mapped, or dropped on purpose, or an error naming it.
    unexpected = [names[n] for n in names if n not in mapping and not _DROPPED.fullmatch(n)]
    if unexpected:
        raise UserError(f"{path}: unexpected key(s) in a {family} checkpoint: {', '.join(sorted(unexpected))}")
    # name a missing key as the file would: under the prefix if the file uses one (the head keys never are)
    shown = prefix if any(k.startswith(prefix) for k in state) else ""
    missing = [n if n.startswith(UNPREFIXED) else shown + n for n in mapping if n not in names]
    if missing:
        raise UserError(f"{path}: key(s) missing from the {family} checkpoint: {', '.join(missing)}")

    model = TransformerClassifier(cfg, num_labels, pooling="cls", pooler=pooler)
    # a fresh head keeps its initialisation
    return copy_weights(model, state, names, mapping, path, keep=() if has_head else ("head.weight", "head.bias"))


def copy_weights(
    model: Transformer,
    state: dict[str, Tensor],
    names: dict[str, str],
    mapping: dict[str, str],
    path: str | Path,
    keep: tuple[str, ...] = (),
) -> Transformer:
    """Copy the checkpoint's tensors into `model` by `mapping` (normalised HF name -> prunelab key; `names`: normalised
    name -> the file's), each shape checked (a mismatch is the user's error, naming both). Every prunelab tensor must
    be filled except the gate and head_ids buffers (at their defaults) and the keys in `keep` (a bug here if not).
    The model remembers the folder it came from (`pretrained_from`)."""
    ours = model.state_dict()
    left = {k for k in ours if not k.endswith((".gate", ".head_gate", ".head_ids")) and k not in keep}
    with torch.no_grad():
        for theirs, mine in mapping.items():
            src = state[names[theirs]]
            if src.shape != ours[mine].shape:
                raise UserError(
                    f"{path}: {names[theirs]} has shape {tuple(src.shape)}, {mine} needs {tuple(ours[mine].shape)}"
                )
            ours[mine].copy_(src)
            left.discard(mine)
    assert not left, f"prunelab parameters not filled by the import: {sorted(left)}"  # a bug here, not the user's
    model.pretrained_from = str(path)
    return model


def check_data_fits(path: str, to_config: Any, vocab_size: int, pad_id: int) -> None:
    """The data's ids must be the checkpoint's (`to_config` reads its config.json into a TransformerConfig): a
    vocabulary no larger than the checkpoint's embedding table and the same padding id. The data modules read the
    checkpoint's own tokenizer (`data.tokenizer`, the model's folder by default), so this fails only when a data
    config was told to use another tokenizer."""
    config = resolve_checkpoint(path) / "config.json"
    if not config.is_file():
        raise UserError(f"model.path={path}: not a Hugging Face model folder (no config.json)")
    cfg = to_config(json.loads(config.read_text()))
    if vocab_size > cfg.vocab_size:
        raise UserError(
            f"model.path={path} has a vocabulary of {cfg.vocab_size} tokens but the data's tokenizer has {vocab_size}: "
            "the data must use the checkpoint's tokenizer (data.tokenizer=<the model folder>)"
        )
    if pad_id != cfg.pad_id:
        raise UserError(
            f"model.path={path} pads with id {cfg.pad_id} but the data's tokenizer with {pad_id}: "
            "the data must use the checkpoint's tokenizer (data.tokenizer=<the model folder>)"
        )


def build_hf_encoder(
    vocab_size: int, pad_id: int, num_classes: int, path: str, **overrides: Any
) -> TransformerClassifier:
    """Hydra entry point (`model=hf_encoder model.path=DIR`): the checkpoint as a classifier for the data's classes.

    The data are tokenized with the checkpoint's own tokenizer (see check_data_fits)."""
    check_data_fits(path, encoder_config, vocab_size, pad_id)  # before the weights are read
    return load_hf_encoder(path, num_classes, **overrides)
