"""What every imported Hugging Face family shares, and nothing family-specific.

nanoGPT's `from_pretrained` is the model of an import: build prunelab's own network from the checkpoint's
config.json, map every key of the file to a prunelab key by name, and copy tensor by tensor with the shapes
checked. Every key is accounted for: mapped, in the family's list of keys dropped on purpose, or an error naming
it; every prunelab parameter is filled. This module holds the family-agnostic half:

- `resolve_checkpoint`: `model.path` -> a local folder (the folder, or a hub id through the Hugging Face cache);
- `read_config` / `read_checkpoint`: config.json, and the state dict from model.safetensors or pytorch_model.bin
  (read with safetensors or `torch.load(weights_only=True)`: `transformers` is not needed);
- `account_for_keys`, `copy_weights`, `fresh_linear`, `check_data_fits`: the checks and copies of an import, and
  `rename_keys`, the copy of an export;
- `recorded_layers`: config.json's `prunelab_kept_layers`, the original numbers of the layers an export kept;
- `copy_source_files`: what a run keeps of its source folder (config and tokenizer files, no weights), so that
  it rebuilds without it.

The families (one module each, prunelab.hf.families) say how their config.json and keys map to prunelab's; the
checkpoint's tokenizer is prunelab.hf.tokenizer."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.errors import UserError

# HF `hidden_act` / `activation` / `activation_function` -> prunelab activation ("gelu" is the exact erf GELU).
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

# TransformerConfig fields a caller may set on top of the checkpoint's (training choices, not the architecture).
OVERRIDABLE = ("dropout", "attn_dropout", "activation_dropout", "layerdrop", "enc_layerdrop", "dec_layerdrop", "gated")

# prunelab's own buffers, at their defaults after an import: gates, and which heads and K/V groups are left
STRUCTURE_BUFFERS = (".gate", ".head_gate", ".head_ids", ".kv_ids", ".head_groups", ".neuron_ids")

# The files of a folder that describe the model without being its weights: config.json, generation_config.json,
# the tokenizer's files (tokenizer.json, tokenizer_config.json, vocab.txt, vocab.json, merges.txt, *.spm, ...).
SOURCE_FILES = ("*.json", "*.txt", "*.model", "*.spm", "*.codes", "*.tiktoken")
# What is fetched of a hub checkpoint: those, and the PyTorch weights (not TF/Flax/ONNX copies).
HUB_FILES = [*SOURCE_FILES, "model*.safetensors", "pytorch_model*.bin", "*.index.json"]
# Weight files (any framework), never copied along with a model's other files.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".index.json")


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


def read_config(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A HF model folder or hub id -> (the local folder, its config.json as a dict)."""
    folder = resolve_checkpoint(path)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    return folder, json.loads((folder / "config.json").read_text())


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A HF model folder or hub id -> (config.json as a dict, state dict with fp16/bf16 upcast to fp32): from
    model.safetensors or pytorch_model.bin, or the shards their `.index.json` lists (larger checkpoints: T5-3B,
    NLLB-3.3B), each shard checked to hold the keys the index gives it."""
    folder, config = read_config(path)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if not (folder / "model.safetensors").is_file() and (folder / index).is_file():
            state = read_shards(folder, index)
            break
    else:
        if (folder / "model.safetensors").is_file():
            state = read_weights(folder / "model.safetensors")
        elif (folder / "pytorch_model.bin").is_file():
            state = read_weights(folder / "pytorch_model.bin")
        else:
            raise UserError(f"{folder}: no model.safetensors, pytorch_model.bin or a sharded checkpoint's index")
    # fp16 checkpoints (Marian-style conversions) are upcast: prunelab computes in fp32 unless told otherwise
    return config, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_weights(file: Path) -> dict[str, Tensor]:
    """One weight file: safetensors, or a torch pickle read with weights_only=True."""
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError("reading .safetensors needs the safetensors package: pip install -e '.[hf]'") from None
        return load_file(str(file), device="cpu")
    return torch.load(file, map_location="cpu", weights_only=True)


def read_shards(folder: Path, index: str) -> dict[str, Tensor]:
    """The shards an index file (`weight_map`: key -> shard file) names, merged; a shard missing from the folder or
    not holding the keys the index gives it is one error."""
    try:
        weight_map = json.loads((folder / index).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / index}: not a sharded checkpoint's index ({type(e).__name__}: {e})") from None
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise UserError(f"{folder}: shard {shard} named by {index} is missing")
        part = read_weights(folder / shard)
        want = {k for k, v in weight_map.items() if v == shard}
        if missing := sorted(want - set(part)):
            raise UserError(f"{folder / shard}: lacks {', '.join(missing[:5])} that {index} puts there")
        state.update(part)
    return state


# config.json's record of an export that took whole layers out: {"enc"/"dec": the original number of each layer kept}
# (prunelab.hf.export writes it; transformers keeps an unknown key as a config attribute and saves it again)
KEPT_LAYERS = "prunelab_kept_layers"


def recorded_layers(hf: Mapping[str, Any], **counts: int) -> dict[str, tuple[int, ...]] | None:
    """config.json's KEPT_LAYERS, checked against the stacks' layer counts (`counts`: enc=..., dec=...): per stack,
    the original number of each of its layers (TransformerConfig.layer_numbers), or None when the key is absent (the
    layers are numbered as in the original: no export renumbered them). A record that cannot be one is one error."""
    record = hf.get(KEPT_LAYERS)
    if record is None:
        return None
    if not isinstance(record, Mapping) or not set(record) <= set(counts):
        raise UserError(f"config.json's {KEPT_LAYERS} must map {' / '.join(counts)} to layer numbers, got {record!r}")
    out = {}
    for side, ids in record.items():
        ok = isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        if not ok or len(ids) != counts[side] or ids != sorted(set(ids)):
            raise UserError(
                f"config.json's {KEPT_LAYERS}[{side!r}] = {ids!r} is not the increasing original numbers of the "
                f"{counts[side]} {side} layers the checkpoint has"
            )
        out[side] = tuple(ids)
    return out


def num(hf: dict[str, Any], *names: str) -> Any:
    """The first of `names` that config.json sets, or one error naming them."""
    for n in names:
        if hf.get(n) is not None:
            return hf[n]
    raise UserError(f"config.json of a {hf.get('model_type')} model lacks {' / '.join(names)}")


def activation(hf: dict[str, Any], name: str, default: str) -> str:
    """config.json's activation (key `name`) as a prunelab activation, or one error."""
    act = hf.get(name, default)
    if act not in HF_ACTIVATIONS:
        raise UserError(f"activation {act!r} of the checkpoint is not supported (supported: {sorted(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[act]


def apply_overrides(cfg: Any, overrides: Mapping[str, Any]) -> None:
    """Training settings among OVERRIDABLE set on a TransformerConfig read from config.json (its shape stays)."""
    if bad := sorted(set(overrides) - set(OVERRIDABLE)):
        raise UserError(f"cannot override {bad} of an imported checkpoint (its shape comes from config.json)")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.__post_init__()


def read_family(
    path: str | Path, to_config: Callable[[dict[str, Any]], Any], weights: bool, overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], Any, dict[str, Tensor] | None]:
    """A family's checkpoint as its import starts: (config.json, the TransformerConfig `to_config` makes of it with the
    training `overrides` applied, the state dict, or None with `weights=False`: config.json alone, the network to be
    filled by a run's checkpoint)."""
    if weights:
        hf, state = read_checkpoint(path)
    else:
        hf, state = read_config(path)[1], None
    cfg = to_config(hf)
    apply_overrides(cfg, overrides)
    return hf, cfg, state


def wb(hf: str, ours: str) -> dict[str, str]:
    """Both parameters of a Linear or LayerNorm: {hf.weight: ours.weight, hf.bias: ours.bias}."""
    return {f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"}


def account_for_keys(
    path: str | Path,
    family: str,
    names: Mapping[str, str],
    mapping: Mapping[str, str],
    dropped: re.Pattern[str] | None = None,
    shown: Callable[[str], str] = str,
) -> None:
    """Every key of the file (`names`: normalised name -> the file's) is mapped or matches `dropped` (the family's
    keys dropped on purpose), and every key of `mapping` (normalised HF name -> prunelab key) is in the file; else
    one error naming them (a missing key as `shown(name)`, the way the file would spell it)."""
    unexpected = [names[n] for n in names if n not in mapping and not (dropped and dropped.fullmatch(n))]
    if unexpected:
        raise UserError(f"{path}: unexpected key(s) in a {family} checkpoint: {', '.join(sorted(unexpected))}")
    missing = [shown(n) for n in mapping if n not in names]
    if missing:
        raise UserError(f"{path}: key(s) missing from the {family} checkpoint: {', '.join(missing)}")


def copy_weights(
    model: nn.Module,
    state: dict[str, Tensor],
    names: dict[str, str],
    mapping: dict[str, str],
    path: str | Path,
    keep: Iterable[str] = (),
) -> nn.Module:
    """Copy the checkpoint's tensors into `model` by `mapping` (normalised HF name -> prunelab key; `names`: normalised
    name -> the file's), each shape checked (a mismatch is the user's error, naming both). Every prunelab tensor must
    be filled except the gate and head_ids buffers (at their defaults) and the keys in `keep` (fresh ones; a bug here
    if not). The model remembers the folder its weights came from (`pretrained_from`)."""
    ours = model.state_dict()
    keep = set(keep)
    left = {k for k in ours if not k.endswith(STRUCTURE_BUFFERS) and k not in keep}
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


@torch.no_grad()
def fresh_linear(layer: nn.Linear, std: float) -> None:
    """A layer the checkpoint does not have, initialised as transformers initialises it: weight ~ N(0, std²)
    (config.json's `initializer_range`), bias 0."""
    layer.weight.normal_(0.0, std)
    if layer.bias is not None:
        layer.bias.zero_()


BITMASK_HINT = "it stays in prunelab's format (prunelab export --format bitmask)"


def rename_keys(state: Mapping[str, Tensor], mapping: Mapping[str, str]) -> dict[str, Tensor]:
    """Export: {HF key: state[prunelab key]} by a family's key map (HF key -> prunelab key); every key of `state`
    must be used (else a bug here, not the user's)."""
    mine = set(mapping.values())
    assert len(mine) == len(mapping), "the import's key map is not one-to-one"
    left = sorted(set(state) - mine)
    assert not left, f"prunelab keys with no Hugging Face key: {left}"
    return {theirs: state[ours] for theirs, ours in mapping.items()}


def check_data_fits(path: str, to_config: Callable[[dict[str, Any]], Any], vocab_size: int, pad_id: int) -> None:
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


def source_files(folder: Path) -> list[Path]:
    """The files at the top of `folder` that describe the model without being its weights (SOURCE_FILES)."""
    return [
        f
        for f in sorted(folder.iterdir())
        if f.is_file()
        and not f.name.startswith(".")
        and not f.name.endswith(WEIGHT_SUFFIXES)
        and any(fnmatch.fnmatch(f.name, p) for p in SOURCE_FILES)
    ]


def copy_source_files(source: str | Path, out: Path) -> Path:
    """A copy of a checkpoint's config, generation config and tokenizer files in `out` (replaced if there), no
    weights: what a run keeps so that its model, tokenizer and export rebuild without the source folder."""
    folder = resolve_checkpoint(source)
    files = source_files(folder)
    if not any(f.name == "config.json" for f in files):
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def no_labels(labels: Sequence[str] | None) -> None:
    """An export of a model that generates (translation, language modelling): label names are a classifier's."""
    if labels is not None:
        raise UserError("labels are for a classifier: a model that generates has none")
