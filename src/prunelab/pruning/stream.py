"""Layer-streamed one-shot pruning (`pruner=oneshot pruner.stream=true`): a Hugging Face checkpoint pruned by
magnitude, Wanda or SparseGPT without ever holding the whole model, with the same masks and weights, bit for bit, as
the in-memory pruning of the same checkpoint (pruning.oneshot, pruning.calibration).

The network is built with its parameters on the meta device (shapes, no memory; its small buffers as usual). Its
parts are then read from the checkpoint's safetensors files when their turn comes, only the part's tensors, each
straight from the file into its own memory (`readinto` at the offset the file's header gives): first the inputs
(the embedding table, pruned by magnitude when asked), which make the calibration set's hidden states and are then
written out and released; then every decoder layer in turn, calibrated on the current hidden states, pruned with
the same solver, run again to give the next layer its inputs, written out and released
(`calibration.prune_sequentially(..., stream=)`); last the final norm and a separate output head, copied through.
Only one part, the calibration set's hidden states of one layer and one matrix's statistics are resident.

With a GPU (`pruner.device`, or `auto` with one present) each part is moved to it in turn and the hidden states stay
there; what is written is copied back to the CPU part by part.

What is written: a Hugging Face folder that transformers' `from_pretrained` and prunelab's import read, sharded one
part a file (`model-0000k-of-0000n.safetensors` and `model.safetensors.index.json`, transformers' own layout), the
pruned weights in fp32 under the names `prunelab.hf.export` gives them (the same tensors, bit for bit, as exporting
the in-memory pruned model), config.json and the source's tokenizer files; and `masks/<part>.safetensors`, the
masks (bool, True = kept) under prunelab's parameter names.

Streamable: the checkpoints whose files hold prunelab's tensors one for one under other names (Llama, Mistral, Qwen2,
Qwen3, Gemma 1-3); decoder-only; safetensors files (single or sharded). Anything else is one error line.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunelab.data.batching import to_device
from prunelab.errors import UserError
from prunelab.hf import causal_lm, gemma
from prunelab.hf.causal_lm import ROTARY_BUFFERS
from prunelab.hf.checkpoint import account_for_keys, read_config, source_files
from prunelab.hf.families import FAMILIES
from prunelab.hf.tensor_files import INDEX, SafetensorsCheckpoint, save_safetensors
from prunelab.models.causal_lm import IGNORE, CausalLM, nll_of
from prunelab.pruning.calibration import Batch, prune_sequentially
from prunelab.pruning.masks import prunable_weights
from prunelab.pruning.memory import peak_memory, release_memory
from prunelab.pruning.solvers import InputStats, check_groups

if TYPE_CHECKING:  # the pruner calls this module: a run-time import would be a cycle
    from prunelab.pruning.oneshot import OneShotPruner

log = logging.getLogger("prunelab")

# model types whose files hold prunelab's tensors one for one (their importers only rename: no fused or transposed
# tensors), and the families that say how
STREAMABLE = (*causal_lm.LLAMA_FAMILY, *gemma.MODEL_TYPES)
INPUTS, OUTPUTS = "inputs", "outputs"  # the parts outside the layers: before the first layer, after the last
MASKS = "masks"  # the output folder's subfolder of masks, one file a part


# --- a network without its weights ----------------------------------------------------------------------------------
@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside hold their parameters on the meta device (shapes, no memory; their initialisation does
    nothing) and their buffers as usual (the rotary frequencies, gates, head numbers: computed from the config)."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def set_parameter(model: nn.Module, name: str, value: Tensor) -> None:
    """Put `value` in place of the parameter `name` (a new Parameter object: the meta one has no storage to fill)."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def part_of(name: str) -> str:
    """The part a parameter is streamed with: its layer (`dec.3`), or the inputs (embeddings) or the outputs (the
    final norm and a separate head)."""
    stack, _, rest = name.partition(".")
    if stack in ("enc", "dec") and rest.split(".", 1)[0].isdigit():
        return f"{stack}.{rest.split('.', 1)[0]}"
    return OUTPUTS if name.startswith(("dec_norm.", "enc_norm.", "lm_head.", "head_proj.")) else INPUTS


class LayerStream:
    """The parts of a network whose parameters are on the meta device, each loaded from the checkpoint when its turn
    comes (`enter`), written out and released after (`leave`): `calibration.prune_sequentially`'s `stream`.
    `masks`: the masks the solver chose for the part's matrices (True = kept), written with it. `on_load(part)`:
    called once the part's weights are in (the embeddings' magnitude pruning)."""

    def __init__(
        self,
        model: nn.Module,
        checkpoint: SafetensorsCheckpoint,
        files: Mapping[str, str],
        device: torch.device,
        writer: ShardWriter | None,
        on_load: Callable[[str], None] = lambda part: None,
    ):
        self.model, self.checkpoint, self.files, self.device = model, checkpoint, files, device
        self.writer, self.on_load = writer, on_load
        self.parts: dict[str, list[str]] = {}
        for n, _ in model.named_parameters():  # a tied table once
            self.parts.setdefault(part_of(n), []).append(n)
        self.masks: dict[str, Tensor] = {}
        self.resident: set[str] = set()

    def order(self) -> list[str]:
        """The parts in the order the forward pass reads them."""
        return sorted(self.parts, key=_part_rank)

    def enter(self, part: str) -> None:
        names = self.parts[part]
        loaded = self.checkpoint.read([self.files[n] for n in names], self.device)
        for n in names:
            set_parameter(self.model, n, loaded.pop(self.files[n]))
        self.resident.add(part)
        self.on_load(part)

    def leave(self, part: str) -> None:
        """The part written out (with its masks), then dropped."""
        names = self.parts[part]
        if self.writer is None:
            raise RuntimeError("LayerStream.leave writes the part: this stream has no writer (drop it instead)")
        tensors = {n: self.model.get_parameter(n).detach() for n in names}
        self.writer.write(part, tensors, {n: self.masks.pop(n) for n in names if n in self.masks})
        del tensors
        self.drop(part)

    def drop(self, part: str) -> None:
        """The part's weights released (back on the meta device)."""
        for n in self.parts[part]:
            set_parameter(self.model, n, torch.empty_like(self.model.get_parameter(n), device="meta"))
        self.resident.discard(part)
        release_memory()


class ShardWriter:
    """The output folder, one shard a part, under Llama-layout keys (`key_of`: prunelab name -> file key); the
    index, config.json and the tokenizer files at the end (`finish`)."""

    def __init__(self, out: Path, parts: Sequence[str], key_of: Mapping[str, str]):
        self.out, self.key_of = out, key_of
        out.mkdir(parents=True, exist_ok=True)
        (out / MASKS).mkdir(exist_ok=True)
        self.shards = {p: f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i, p in enumerate(parts)}
        self.weight_map: dict[str, str] = {}
        self.total = 0
        self.done: set[str] = set()

    def write(self, part: str, tensors: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
        shard = {self.key_of[n]: t.to("cpu").contiguous() for n, t in tensors.items()}
        save_safetensors(shard, self.out / self.shards[part])
        self.weight_map.update(dict.fromkeys(shard, self.shards[part]))
        self.total += sum(t.numel() * t.element_size() for t in shard.values())
        self.done.add(part)
        if masks:
            kept = {n: m.to("cpu", torch.bool) for n, m in masks.items()}
            save_safetensors(kept, self.out / MASKS / f"{part}.safetensors")

    def finish(self, config: dict[str, Any], source: Path) -> None:
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.out / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        (self.out / "model.safetensors").unlink(missing_ok=True)  # a single file would be read instead of the index
        (self.out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in source_files(source):
            if f.name != "config.json" and f.resolve() != (self.out / f.name).resolve():
                shutil.copyfile(f, self.out / f.name)


# --- the streamed pruning -------------------------------------------------------------------------------------------
def streamable(source: str | Path) -> tuple[Path, dict[str, Any], SafetensorsCheckpoint]:
    """(the folder, its config.json, its weight files) of a checkpoint that can be streamed, or one error line."""
    folder, hf = read_config(source)
    kind = hf.get("model_type")
    if kind not in STREAMABLE:
        raise UserError(
            f"pruner.stream=true streams decoder-only checkpoints whose tensors are prunelab's one for one "
            f"({', '.join(STREAMABLE)}), not model_type {kind!r}; prune it in memory (pruner.stream=false)"
        )
    return folder, hf, SafetensorsCheckpoint(folder)


def streamed_network(folder: Path, hf: dict[str, Any], checkpoint: SafetensorsCheckpoint) -> tuple[CausalLM, dict]:
    """The checkpoint's network with its parameters on the meta device, and {prunelab parameter: the file's key},
    every key of the file accounted for as the import does (mapped, dropped on purpose, or an error)."""
    kind = hf["model_type"]
    family = FAMILIES[kind]
    cfg = family.network_config(hf)
    with parameters_on_meta():
        model = CausalLM(cfg)
    names: dict[str, str] = {}  # normalised name (without `model.`) -> the file's key, as causal_lm.llama_names
    for k in checkpoint.where:
        n = k.removeprefix("model.")
        if n in names:
            raise UserError(f"{folder}: keys {names[n]!r} and {k!r} both name {n!r}")
        names[n] = k
    tied_copy = names.pop("lm_head.weight", None) if cfg.tie_embeddings else None
    mapping = family.key_map(kind, cfg)
    account_for_keys(folder, kind, names, mapping, dropped=ROTARY_BUFFERS)
    files = {mine: names[theirs] for theirs, mine in mapping.items()}
    if tied_copy is not None:  # a tied head some files store: it must be the embedding (the import checks the same)
        both = checkpoint.read([tied_copy, files["embed.weight"]], torch.device("cpu"))
        if not torch.equal(*both.values()):
            raise UserError(f"{folder}: lm_head.weight differs from the embedding but tie_word_embeddings is true")
    return model, files


def buffers_to(model: nn.Module, device: torch.device) -> None:
    """The buffers (rotary frequencies, gates) where the layers will run; the parameters stay where they are."""
    for m in model.modules():
        for k, b in m._buffers.items():
            if b is not None:
                m._buffers[k] = b.to(device)


def exported_config(hf: dict[str, Any]) -> dict[str, Any]:
    """config.json as prunelab.hf.export writes it for these families: the source's, its class, fp32 weights."""
    config = dict(hf)
    config["architectures"] = [FAMILIES[hf["model_type"]].ARCHITECTURES[hf["model_type"]]]
    config["dtype"] = "float32"
    if "torch_dtype" in config:
        config["torch_dtype"] = "float32"
    return config


@torch.no_grad()
def stream_prune(
    pruner: OneShotPruner, source: str | Path, out: str | Path, batches: Sequence[Batch], device: torch.device
) -> dict[str, Any]:
    """Prune the checkpoint `source` as `pruner` says (its method, pattern, sparsity, embeddings), calibrated on
    `batches` (ignored by magnitude), one part at a time on `device`, into the folder `out` (see the module
    docstring). -> what results.json's `oneshot` records of it: matrices, seconds, peak memory, the folder."""
    folder, hf, checkpoint = streamable(source)
    out = Path(out)
    if out.resolve() == folder.resolve():
        raise UserError(f"pruner.stream_dir={out}: the pruned folder would overwrite the source checkpoint")
    t0 = time.perf_counter()
    with peak_memory(device) as memory:
        model, files = streamed_network(folder, hf, checkpoint)
        buffers_to(model.eval(), device)
        weights = prunable_weights(model, pruner.prune_embeddings)
        embeddings = {n for n in weights if not isinstance(_owner(model, n), nn.Linear)}
        linears = set(weights) - embeddings
        if outside := sorted(n for n in linears if part_of(n) in (INPUTS, OUTPUTS)):
            raise UserError(
                f"pruner.stream=true: {', '.join(outside)} lies outside the layers and is calibrated by passes through "
                "the whole model (prune_embeddings=true with an untied lm_head); prune it in memory "
                "(pruner.stream=false) or leave the embeddings (pruner.prune_embeddings=false)"
            )
        for n, w in weights.items():
            check_groups(n, w.shape[1], pruner.pattern)
        parts = sorted({part_of(n) for n, _ in model.named_parameters()}, key=_part_rank)
        writer = ShardWriter(out, parts, output_keys(hf))

        def prune_embeddings(part: str) -> None:  # first, as in memory: the layers see what the pruned table gives
            for n in sorted(embeddings):
                if part_of(n) == part:
                    stream.masks[n] = ~pruner.prune_embedding(model.get_parameter(n))

        stream = LayerStream(model, checkpoint, files, device, writer, on_load=prune_embeddings)

        def solve(name: str, linear: nn.Linear, stats: InputStats | None) -> None:
            stream.masks[f"{name}.weight"] = ~pruner.prune_matrix(linear, stats)

        if pruner.method == "magnitude":  # |W| alone: each part pruned as it comes, no passes through the model
            for part in stream.order():
                stream.enter(part)
                for n in sorted(linears):
                    if part_of(n) == part:
                        solve(n.removesuffix(".weight"), _owner(model, n), None)  # type: ignore[arg-type]
                stream.leave(part)
        else:
            data = [to_device(b, device) for b in batches]
            prune_sequentially(model, data, linears, solve, full=pruner.method == "sparsegpt", stream=stream)
            del data
            for part in stream.order():  # the parts no pass needed (the outputs): copied through
                if part not in writer.done:
                    stream.enter(part)
                    stream.leave(part)
        writer.finish(exported_config(hf), folder)
    model_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32, as the in-memory model holds it
    return {
        "stream": {
            "source": str(folder),
            "out": str(out),
            "parts": len(parts),
            "largest_part_bytes": max(
                sum(model.get_parameter(n).numel() * 4 for n in stream.parts[p]) for p in stream.parts
            ),
        },
        "matrices": len(linears) + len(embeddings),
        "seconds": time.perf_counter() - t0,
        "device": str(device),
        # the peak above the process before the pruning read anything: one part, the calibration set's hidden
        # states of one layer and the solver's work, never the model
        "memory": {**memory, "model_bytes": model_bytes, "peak_over_model": memory["extra_bytes"] / model_bytes},
    }


@torch.no_grad()
def stream_nll(source: str | Path, batches: Sequence[Batch], device: torch.device) -> dict[str, Any]:
    """The next-token NLL of the checkpoint `source` on `batches` ({"src", "target"} as the language-model data
    gives them, IGNORE where a target is not scored) with one part of it resident at a time, as `stream_prune` holds
    them: the embeddings, then each layer over every batch's hidden states, then the final norm and the head (with
    the embedding again where it is tied). The same arithmetic as the whole model's `token_nll`, so a checkpoint too
    large for memory, such as `stream_prune`'s output, is scored as the run would score it. -> the summed NLL
    (float64), the scored tokens and the perplexity (exp of their mean)."""
    folder, hf, checkpoint = streamable(source)
    model, files = streamed_network(folder, hf, checkpoint)
    buffers_to(model.eval(), device)
    stream = LayerStream(model, checkpoint, files, device, writer=None)
    data = [to_device(b, device) for b in batches]
    stream.enter(INPUTS)
    xs = [model.embed_tokens(b["src"]) for b in data]  # (B, T, C) each
    ropes = [model.rope(0, b["src"].size(1), x.dtype) for b, x in zip(data, xs, strict=True)]
    tied = model.lm_head is None
    if not tied:
        stream.drop(INPUTS)
    for i, layer in enumerate(model.dec):
        stream.enter(f"dec.{i}")
        xs = [layer(x, rope) for x, rope in zip(xs, ropes, strict=True)]
        stream.drop(f"dec.{i}")
    stream.enter(OUTPUTS)
    nll, tokens = 0.0, 0
    for x, b in zip(xs, data, strict=True):
        nll += float(nll_of(model.logits(model.dec_norm(x)), b["target"]).double().sum())
        tokens += int((b["target"] != IGNORE).sum())
    for part in list(stream.resident):
        stream.drop(part)
    return {"nll": nll, "tokens": tokens, "perplexity": math.exp(nll / tokens) if tokens else float("nan")}


def _part_rank(part: str) -> tuple[int, int]:
    if part == INPUTS:
        return (0, 0)
    if part == OUTPUTS:
        return (3, 0)
    stack, i = part.split(".")
    return (1 if stack == "enc" else 2, int(i))


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model


# --- reading the pruned folder back ---------------------------------------------------------------------------------
def output_keys(hf: dict[str, Any]) -> dict[str, str]:
    """{prunelab parameter: its key in the pruned folder} of a streamable checkpoint's config.json."""
    kind = hf["model_type"]
    family = FAMILIES[kind]
    return {
        mine: causal_lm.file_key(theirs) for theirs, mine in family.key_map(kind, family.network_config(hf)).items()
    }


def load_streamed(out: str | Path, names: Sequence[str], device: torch.device) -> tuple[dict, dict]:
    """The pruned folder `out` -> ({prunelab parameter: tensor} for `names`, {prunelab parameter: bool mask, True =
    kept}), on `device`: what the in-memory pruning leaves in the model and in the pruner."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError("reading safetensors files needs the safetensors package: pip install -e '.[hf]'") from None
    out = Path(out)
    keys = output_keys(read_config(out)[1])
    read = SafetensorsCheckpoint(out).read([keys[n] for n in names], device)
    masks: dict[str, Tensor] = {}
    for f in sorted((out / MASKS).glob("*.safetensors")):
        masks.update({n: m.to(device) for n, m in load_file(str(f)).items()})
    return {n: read[keys[n]] for n in names}, masks
