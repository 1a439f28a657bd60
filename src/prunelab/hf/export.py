"""Export a (mask-)pruned model that was imported from Hugging Face back to a Hugging Face folder: the inverse of
the import of its family (prunelab.hf.encoders: BERT, RoBERTa, ELECTRA, DistilBERT -> *ForSequenceClassification;
prunelab.hf.marian -> MarianMTModel), computing the same logits as the prunelab model (eval mode, fp32).

The key names come from the family's own import maps, inverted (its `export_folder`). What prunelab keeps outside
the weights is folded into them, exactly:

- masks: every masked matrix is written as weight * mask (its zeros are in the file);
- a sub-layer gate at 0: the output projection (out_proj of an attention, fc2 of a feed-forward) gets zero weight
  and bias, so the sub-layer adds exactly 0 to the residual, as g * f(x) with g = 0 does (post-norm or not:
  LN(x + 0) = LN(x + 0 * f(x)));
- a head gate at 0: the head's columns of out_proj are zeroed (head j: columns j*hs ... j*hs+hs-1);
- heads removed structurally (`head_ids` shorter than n_heads) come back as zero rows of Q/K/V and zero columns
  of out_proj (a zero head attends uniformly to zero values and adds nothing);
- feed-forward neurons removed structurally: when every feed-forward has the same number left, the folder's
  config gets that width (a smaller model, as Minitron's width pruning); otherwise each comes back at the full
  width with zero rows of fc1 (and fc3) and zero columns of fc2 where its removed neurons were (adding nothing);
- whole layers removed structurally (depth pruning: every sub-layer of a stack layer gone, which passes x on
  unchanged, post-norm or not): the layer leaves the network, the layers after it are renumbered and config.json's
  layer count goes down (a per-layer list such as `layer_types` keeps the kept layers' entries), and config.json's
  `prunelab_kept_layers` records each kept layer's original number per stack (an import reads it into
  `cfg.layer_numbers`, so that distillation matches each layer to the teacher's of the same number);
  AttendOut's uniform attention
  (no Q or K projection) is Q = K = 0: every score is 0, so softmax is the uniform map over the keys allowed.

Not exportable, a UserError saying so (the model stays in prunelab's format, `prunelab export --format bitmask`):
gates other than 0 or 1, a post-norm layer with only some of its sub-layers removed (LN(x) cannot be skipped in
HF's layers; a pre-norm one is written with the removed sub-layer's weights at zero),
mean pooling or a classifier without the family's pooler (a fresh head on an ELECTRA/DistilBERT body).

The folder: config.json (the source's, with the labels and `architectures` of the class written, dtype float32),
model.safetensors (fp32) and the source folder's tokenizer files, so that it is self-contained. `transformers` is
not imported here; `safetensors` only when writing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from prunelab.errors import UserError
from prunelab.hf.checkpoint import BITMASK_HINT, KEPT_LAYERS, OVERRIDABLE, STRUCTURE_BUFFERS, WEIGHT_SUFFIXES
from prunelab.hf.families import FAMILIES, MODULES
from prunelab.models.surgery import layer_numbers
from prunelab.models.transformer import FeedForward, MultiHeadAttention, Transformer, TransformerConfig

# config.json's model_type -> its family's module (prunelab.hf.families; the protocol: prunelab.hf.family.Family).
# export_folder gets cfg, the network written (the model's, less the layers removed whole); of FF_WIDTH_KEYS and
# LAYER_COUNT_KEYS the first key is always written, the others only where the source has them (aliases).
# TransformerConfig fields that are training settings, not the network (they may differ from config.json's).
TRAINING_FIELDS = (*OVERRIDABLE, "removed")


def export_hf(
    model: nn.Module,
    source: str | Path,
    out: str | Path,
    masks: Mapping[str, Tensor] | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write `model` (imported from the HF folder `source` by its family's importer, then pruned) as a folder that
    transformers' `from_pretrained` loads (AutoModelForSequenceClassification for an encoder, MarianMTModel for
    Marian) with the same logits. `masks`: {parameter name: 0/1 mask}, written as weight * mask. `labels`: class
    names of a classifier, index = class id (default: the source's when their number fits, else LABEL_i).
    `source` may be a run's copy of the source folder without weights (its `hf_source`). Returns `out`."""
    source, out = Path(source), Path(out)
    if not (source / "config.json").is_file():
        raise UserError(f"{source}: not a Hugging Face model folder (no config.json)")
    if out.resolve() == source.resolve():
        raise UserError(f"{out}: the export would overwrite the source checkpoint; choose another folder")
    hf = json.loads((source / "config.json").read_text())
    family = hf.get("model_type")
    module = FAMILIES.get(family)
    if module is None or type(model) is not module.MODEL_CLASS:
        raise UserError(
            f"cannot export a {type(model).__name__} as the {family!r} checkpoint of {source}: only "
            + " or ".join(f"a {m.MODEL_CLASS.__name__} imported from {', '.join(m.MODEL_TYPES)}" for m in MODULES)
            + " can be"
        )
    assert isinstance(model, Transformer)
    want = module.network_config(hf)
    if not model.pads:  # a language model's pad id only fills batches: the data's may differ from config.json's
        want.pad_id = model.cfg.pad_id
    _check_same_network(model.cfg, want, source)

    state, kept = without_removed_layers(model, effective_state(model, masks))
    record = kept_layer_numbers(model, kept)
    cfg = replace(model.cfg, enc_layers=len(kept["enc"]), dec_layers=len(kept["dec"]), removed=(), layer_numbers=record)
    config, tensors = module.export_folder(model, hf, state, labels, cfg)
    width = feed_forward_width(model)
    if width != model.cfg.d_ff:  # every feed-forward lost the same number of neurons: a narrower network
        _set_keys(config, module.FF_WIDTH_KEYS[family], width)
    for side, keys in module.LAYER_COUNT_KEYS[family].items():
        if len(kept[side]) != len(getattr(model, side)):
            _set_keys(config, keys, len(kept[side]))
            if len(config.get("layer_types") or ()) == len(getattr(model, side)):  # one stack: its per-layer list
                config["layer_types"] = [config["layer_types"][i] for i in kept[side]]
    config.pop(KEPT_LAYERS, None)  # a source's own record is composed into `record`
    if record is not None:
        config[KEPT_LAYERS] = {side: list(ids) for side, ids in record.items()}
    config["architectures"] = [module.ARCHITECTURES[family]]
    config["dtype"] = "float32"  # the weights are written in fp32 (an fp16 source would otherwise load as fp16)
    if "torch_dtype" in config:  # the key before transformers 5
        config["torch_dtype"] = "float32"

    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("writing model.safetensors needs the safetensors package: pip install -e '.[hf]'") from None
    out.mkdir(parents=True, exist_ok=True)
    _copy_tokenizer_files(source, out)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    return out


def _set_keys(config: dict, keys: Sequence[str], value: int) -> None:
    """config[keys[0]] = value, and every other key of `keys` that config.json has (an alias of the first)."""
    for i, key in enumerate(keys):
        if i == 0 or key in config:
            config[key] = value


def without_removed_layers(model: Transformer, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict]:
    """Whole layers removed for real leave the network: (the state with the layers after them renumbered, the
    original number of each layer kept per stack: {"enc": [...], "dec": [...]})."""
    kept = {
        side: [i for i, layer in enumerate(stack) if any(getattr(layer, k) is not None for k in layer.kinds)]
        for side, stack in (("enc", model.enc), ("dec", model.dec))
    }
    renumber = {f"{side}.{old}.": f"{side}.{new}." for side, ids in kept.items() for new, old in enumerate(ids)}
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] not in kept or not parts[1].isdigit():
            out[k] = v
        elif (prefix := f"{parts[0]}.{parts[1]}.") in renumber:  # a removed layer has no parameters to drop
            out[renumber[prefix] + k[len(prefix) :]] = v
    return out, kept


def kept_layer_numbers(model: Transformer, kept: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]] | None:
    """The original number of each layer the export keeps, per stack with layers (`kept`: their indices in the model,
    without_removed_layers), for config.json's KEPT_LAYERS: the renumbering hides which layers they were, and hidden-
    state distillation must match each to the teacher's layer of the same number. None when no layer leaves and the
    model's own numbers are its indices (nothing to record)."""
    if not model.cfg.layer_numbers and all(len(ids) == len(getattr(model, side)) for side, ids in kept.items()):
        return None
    numbers = layer_numbers(model)  # a re-imported export's record, composed
    return {side: tuple(numbers[side][i] for i in ids) for side, ids in kept.items() if len(getattr(model, side))}


def _check_same_network(ours: TransformerConfig, want: TransformerConfig, source: Path) -> None:
    """The model must be the network config.json describes (training settings aside)."""
    differ = [
        f"{f.name}={getattr(ours, f.name)!r} (the checkpoint's: {getattr(want, f.name)!r})"
        for f in fields(TransformerConfig)
        if f.name not in TRAINING_FIELDS and getattr(ours, f.name) != getattr(want, f.name)
    ]
    if differ:
        raise UserError(f"the model is not the network of {source}: {'; '.join(differ)}")


def _gate_value(g: Tensor, name: str) -> list[float]:
    """The gate's values, each exactly 0 or 1, or a UserError."""
    values = g.detach().float().flatten().tolist()
    bad = sorted({v for v in values if v not in (0.0, 1.0)})
    if bad:
        raise UserError(
            f"{name} has gate value(s) {bad}: only gates of exactly 0 (pruned) or 1 can be folded into the weights "
            f"of a Hugging Face model; {BITMASK_HINT}"
        )
    return values


@torch.no_grad()
def effective_state(model: Transformer, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model's state dict in fp32 with everything folded into the weights (see the module doc): masks
    applied, gates at 0 as zero weights, removed heads as zero rows/columns, uniform attention as Q = K = 0.
    The gate, head_gate and head_ids buffers are gone; every other key is the model's."""
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
        for k, v in model.state_dict().items()
    }
    for name, m in (masks or {}).items():
        if name not in state:
            raise UserError(f"a mask for {name!r}, which the model does not have")
        if tuple(m.shape) != tuple(state[name].shape):
            raise UserError(f"the mask of {name} has shape {tuple(m.shape)}, the weight {tuple(state[name].shape)}")
        state[name] = state[name] * m.detach().to("cpu", torch.float32)

    cfg = model.cfg
    width = feed_forward_width(model)
    full: dict[str, Tensor] | None = None  # the shapes of the unpruned network, for sub-layers removed for real
    for side, stack in (("enc", model.enc), ("dec", model.dec)):
        for i, layer in enumerate(stack):
            if all(getattr(layer, kind) is None for kind in layer.kinds):
                continue  # a whole layer removed: it leaves the network (without_removed_layers)
            for kind in layer.kinds:
                name = f"{side}.{i}.{kind}"
                module = getattr(layer, kind)
                if module is None:
                    if not cfg.pre_norm:
                        raise UserError(
                            f"{name} was removed structurally: a Hugging Face layer cannot skip a sub-layer with its "
                            f"LayerNorm (post-norm LN(x + f(x)) is not x without it; only whole layers can leave); "
                            f"{BITMASK_HINT}"
                        )
                    # pre-norm: x + f(LN(x)) with f's output projection at zero is x, exactly as without the sub-layer
                    if full is None:
                        with torch.device("meta"):
                            full = type(model)(replace(cfg, removed=(), d_ff=width)).state_dict()  # type: ignore[call-arg]
                    for k, v in full.items():
                        if k.startswith((f"{name}.", f"{name}_res.")) and not k.endswith(STRUCTURE_BUFFERS):
                            state[k] = torch.ones(v.shape) if k.endswith("norm.weight") else torch.zeros(v.shape)
                    continue
                gate = _gate_value(module.gate, name)[0] if cfg.gated else 1.0
                for buf in ("gate", "head_gate", "head_ids", "kv_ids", "head_groups", "neuron_ids"):
                    state.pop(f"{name}.{buf}", None)
                if isinstance(module, MultiHeadAttention):
                    _expand_attention(state, name, module, cfg)
                elif module.width != width:
                    _expand_feed_forward(state, name, module, width)
                out = f"{name}.{'fc2' if kind == 'ff' else 'out_proj'}"
                if gate == 0.0:  # the sub-layer adds exactly 0
                    state[f"{out}.weight"].zero_()
                    if f"{out}.bias" in state:
                        state[f"{out}.bias"].zero_()
    return state


def _expand_attention(state: dict[str, Tensor], name: str, attn: MultiHeadAttention, cfg: TransformerConfig) -> None:
    """Q/K/V/O of an attention at full width (cfg.n_heads query heads, cfg.kv_heads K/V heads), head gates at 0
    folded into out_proj; a removed head's rows (and a removed K/V group's) come back as zeros."""
    hs, d = cfg.hs, cfg.d_model
    ids = attn.head_ids.tolist()  # the original number of each head left, in slot order
    kv_ids = attn.kv_ids.tolist() if attn.grouped else ids  # and of each K/V head left
    gates = _gate_value(attn.head_gate, f"{name} (head gates)") if cfg.gated else [1.0] * len(ids)
    if len(gates) != len(ids):
        raise UserError(f"{name}: {len(gates)} head gates for {len(ids)} heads (per-example gates cannot be exported)")

    def rows(heads: list[int]) -> list[int]:
        return [h * hs + j for h in heads for j in range(hs)]

    # slot s of the compact weights holds original head ids[s]; a head gated at 0 keeps its Q/K/V, loses its O
    kept = rows([h for h, g in zip(ids, gates, strict=True) if g == 1.0])
    kept_slot = rows([s for s, g in enumerate(gates) if g == 1.0])
    for p, heads, width in (
        ("q_proj", ids, cfg.n_heads),
        ("k_proj", kv_ids, cfg.kv_heads),
        ("v_proj", kv_ids, cfg.kv_heads),
    ):
        w = torch.zeros(width * hs, d)
        bias = f"{name}.{p}.bias" in state or (attn.uniform and p != "v_proj" and cfg.qkv_bias)
        b = torch.zeros(width * hs) if bias else None
        if not (attn.uniform and p != "v_proj"):  # uniform attention: Q = K = 0, so every score is 0
            w[rows(heads)] = state[f"{name}.{p}.weight"]
            if b is not None:
                b[rows(heads)] = state[f"{name}.{p}.bias"]
        state[f"{name}.{p}.weight"] = w
        if b is not None:
            state[f"{name}.{p}.bias"] = b
    o = torch.zeros(d, cfg.n_heads * hs)
    o[:, kept] = state[f"{name}.out_proj.weight"][:, kept_slot]
    state[f"{name}.out_proj.weight"] = o


def feed_forward_width(model: Transformer) -> int:
    """The feed-forward width of the exported network: the common width when every feed-forward has the same
    number of neurons left (d_ff when none were removed), else d_ff (the narrower ones padded with zero neurons)."""
    widths = {ff.width for ff in model.modules() if isinstance(ff, FeedForward)}
    return widths.pop() if len(widths) == 1 else model.cfg.d_ff


def _expand_feed_forward(state: dict[str, Tensor], name: str, ff: FeedForward, width: int) -> None:
    """fc1/fc3 rows and fc2 columns of a feed-forward at `width` neurons (its original numbering): the removed
    neurons' places hold zeros, which add exactly nothing to fc2's output."""
    slots = torch.tensor(ff.neuron_numbers(), dtype=torch.long)
    for p in ("fc1", "fc3"):
        if f"{name}.{p}.weight" not in state:
            continue
        w = state[f"{name}.{p}.weight"]
        full = torch.zeros(width, w.shape[1])
        full[slots] = w
        state[f"{name}.{p}.weight"] = full
        if f"{name}.{p}.bias" in state:
            b = torch.zeros(width)
            b[slots] = state[f"{name}.{p}.bias"]
            state[f"{name}.{p}.bias"] = b
    w = state[f"{name}.fc2.weight"]
    full = torch.zeros(w.shape[0], width)
    full[:, slots] = w
    state[f"{name}.fc2.weight"] = full


def _copy_tokenizer_files(source: Path, out: Path) -> list[Path]:
    """Everything at the top of `source` except weights, config.json and hidden files: the tokenizer files
    (vocab.txt, tokenizer.json, merges.txt, source.spm, ...), generation_config.json, a README."""
    copied = []
    for f in sorted(source.iterdir()):
        if not f.is_file() or f.name == "config.json" or f.name.startswith(".") or f.name.endswith(WEIGHT_SUFFIXES):
            continue
        shutil.copyfile(f, out / f.name)
        copied.append(out / f.name)
    return copied
