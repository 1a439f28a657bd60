"""Sequential, memory-bounded calibration for one-shot pruning (pruning.oneshot): every prunable Linear of a prunelab
model is pruned from the inputs it sees on a calibration set, layer after layer, each layer seeing the outputs of
the layers already pruned before it, as the reference implementations of Wanda and SparseGPT do.

The calibration set goes through the model one stack layer at a time: the hidden states of every calibration batch
at the current layer are kept (one layer's activations for the whole set, not the network's), the layer is run once
with hooks that gather its Linears' input statistics (only on real tokens: padding is left out; the decoder's are
the positions whose target the loss counts), its Linears are pruned, and it is run again, pruned, to give the next
layer its inputs. The decoder starts from the pruned encoder's memory, so cross-attention sees what the pruned
encoder gives. Linears outside the stacks (ELECTRA's embedding projection, a classifier's pooler and head) are pruned
in the order the forward pass calls them, each from a full forward pass of the calibration set through the model
pruned so far. Within a layer every Linear is calibrated on the unpruned layer's inputs (as the references do).
"""

from __future__ import annotations

import copy
import logging
import random
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from prunelab.data.batching import batch_real_tokens, decoder_positions
from prunelab.data.sources.files import read_lines
from prunelab.data.sources.hf import TEXT_COLUMNS
from prunelab.errors import UserError
from prunelab.pruning.memory import release_memory
from prunelab.pruning.solvers import InputStats

log = logging.getLogger("prunelab")
Batch = dict[str, Any]
# (Linear's name, the Linear, its input statistics): prunes that Linear (its weight, and whatever bookkeeping)
Solve = Callable[[str, nn.Linear, InputStats], None]


class Stream(Protocol):
    """A network whose weights are not all resident (pruning.stream): `enter(part)` loads a part's weights,
    `leave(part)` writes and releases them. Parts: "inputs" (what makes the first layer's inputs), then each layer
    ("dec.3")."""

    def enter(self, part: str) -> None: ...

    def leave(self, part: str) -> None: ...


# --- the calibration set --------------------------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    batches: list[Batch]
    report: dict[str, Any]  # what results.json records: split, examples, tokens, seed, how they were drawn


def calibration_set(
    datamodule: Any,
    n: int,
    max_tokens: int | None,
    seed: int,
    split: str = "train",
    batch_tokens: int = 512,
    file: str | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    columns: Sequence[str] | None = None,
) -> CalibrationSet:
    """`n` examples (a seeded random sample, the same seed the same sample) of the run's own `split`, or of a text
    `file` or a `datasets` data set (`dataset`, `dataset_config`, `dataset_split`, text `columns`) encoded by the
    run's tokenizer, stopping early once `max_tokens` tokens (source + target) are in, batched as the data module
    batches its evaluation sets with at most `batch_tokens` tokens a batch (a longer example alone): small batches keep
    the passes' temporary activations small next to the calibration set's. Every process draws the same set (no DDP
    sharding: all ranks must choose the same masks)."""
    if batch_tokens < 1:
        raise UserError(f"pruner.calibration.batch_tokens must be >= 1, got {batch_tokens}")
    if n < 1:
        raise UserError(f"pruner.calibration.n must be >= 1, got {n}")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"pruner.calibration.max_tokens must be >= 1 or null, got {max_tokens}")
    if file and dataset:
        raise UserError("pruner.calibration.file and pruner.calibration.dataset are two sources: set one")
    if file or dataset:
        lines, source = (
            file_texts(file) if file else dataset_texts(datamodule, dataset, dataset_config, dataset_split, columns)
        )
        examples = datamodule.encode_texts(lines, source)
    else:
        source = f"the run's {split} split"
        examples = datamodule.examples.get(split)
        if not examples:
            raise UserError(f"pruner.calibration.split={split!r}: the data has no such split with examples")
    order = random.Random(f"calibration-{seed}").sample(range(len(examples)), min(n, len(examples)))
    chosen, tokens = [], 0
    for i in order:
        length = datamodule.example_length(examples[i])
        if max_tokens is not None and chosen and tokens + length > max_tokens:
            break
        chosen.append(i)
        tokens += length
    view = copy.copy(datamodule)  # the same batching and collation, on the chosen examples, unsharded
    view.examples = {**datamodule.examples, "valid": [examples[i] for i in sorted(chosen)]}
    view.trainer = None
    view.eval_max_tokens = batch_tokens
    batches = list(view.val_dataloader())
    report = {
        "source": source,
        "split": None if file or dataset else split,
        "examples": len(chosen),
        "examples_asked": n,
        "examples_available": len(examples),
        "tokens": tokens,
        "max_tokens": max_tokens,
        "seed": seed,
        "batch_tokens": batch_tokens,
        "drawn": "seeded random sample",
    }
    return CalibrationSet(batches, report)


def file_texts(path: str) -> tuple[list[str], str]:
    """The non-empty lines of a text file (plain or .gz) -> (lines, where they came from)."""
    where = Path(path).expanduser()
    if not where.is_file():
        raise UserError(f"pruner.calibration.file={path}: no such file")
    lines = [line for line in read_lines(where) if line.strip()]
    if not lines:
        raise UserError(f"pruner.calibration.file={path}: the file has no text")
    return lines, str(where)


def dataset_texts(
    datamodule: Any, name: str, config: str | None, split: str, columns: Sequence[str] | None
) -> tuple[list[str], str]:
    """One split of a `datasets` data set (a folder written by save_to_disk, or a name load_dataset finds offline)
    as text lines: the `columns` joined by tabs; null columns: a `translation` column in the run's languages, else
    the usual text columns of data=hf_classification. -> (lines, where they came from)."""
    try:
        import datasets
    except ImportError:
        raise UserError("pruner.calibration.dataset needs the datasets package: pip install -e '.[hf]'") from None
    folder = Path(name).expanduser()
    where = f"data set {name!r}" + (f" ({config})" if config else "") + f", split {split!r}"
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "dataset_info.json").is_file():
            found = datasets.load_from_disk(str(folder))
        else:
            found = datasets.load_dataset(name, config)
    except Exception as e:  # datasets raises many kinds (FileNotFoundError, ConnectionError, ValueError, ...)
        raise UserError(f"pruner.calibration.dataset: cannot load {where}: {' '.join(str(e).split())[:300]}") from e
    if isinstance(found, datasets.DatasetDict):
        if split not in found:
            raise UserError(f"pruner.calibration.dataset_split={split!r}: {name!r} has {', '.join(found)}")
        found = found[split]
    have = list(found.column_names)
    langs = (getattr(datamodule, "src_lang", None), getattr(datamodule, "tgt_lang", None))
    if columns:
        if missing := [c for c in columns if c not in have]:
            raise UserError(f"pruner.calibration.columns: {where} has no column {missing[0]!r} ({', '.join(have)})")
        parts = [[str(x) for x in found[c]] for c in columns]
    elif "translation" in have and all(langs):
        parts = [[str(p[lang]) for p in found["translation"]] for lang in langs]
    else:
        guess = next((c for c in TEXT_COLUMNS if set(c) <= set(have)), None)
        if guess is None:
            raise UserError(f"pruner.calibration.columns: which columns of {where} hold the text? ({', '.join(have)})")
        parts = [[str(x) for x in found[c]] for c in guess]
    lines = ["\t".join(" ".join(t.split("\t")) for t in row) for row in zip(*parts, strict=True)]
    return [line for line in lines if line.strip()], where


# --- statistics from hooks ------------------------------------------------------------------------------------------
class Recorder:
    """Forward hooks on some Linears that add each call's inputs, at the positions of `real` tokens, to the Linear's
    InputStats. `real[name]` is set per batch (`start`): a (B, T) bool of real tokens for 3-D inputs, or None (all
    rows). Linears that read the very same input tensor (q/k/v, gate/up, Phi's attention and MLP) at the same
    positions share one accumulation: the first batch finds them (each call's input looked up among the batch's
    earlier ones, held by weak references), later batches are checked against it, and `finish` gives each its own
    copy (a solver may overwrite it)."""

    def __init__(self, linears: dict[str, nn.Linear], full: bool):
        self.stats = {n: InputStats(m.in_features, full, m.weight.device) for n, m in linears.items()}
        self.real: dict[str, Tensor | None] = {}
        self.same_as: dict[str, str] = {}  # a Linear -> the one whose accumulation it shares
        self.batches = 0
        self._seen: dict[int, tuple[weakref.ref, str]] = {}  # id(input) -> (the input, who accumulated it)
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in linears.items()]

    def start(self, real: dict[str, Tensor | None]) -> None:
        """A new calibration batch, with its real positions per Linear."""
        self.real, self._seen = real, {}
        self.batches += 1

    def _first_reader(self, x: Tensor, real: Tensor | None) -> str | None:
        """The Linear that accumulated this very tensor at these positions earlier in the batch, if any."""
        seen = self._seen.get(id(x))
        if seen is None or seen[0]() is not x or self.real.get(seen[1]) is not real:
            return None
        return seen[1]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            real = self.real.get(name)
            first = self._first_reader(x, real)
            if self.batches <= 1 and first is not None:
                self.same_as.setdefault(name, first)
            if name in self.same_as:
                if first != self.same_as[name]:
                    raise RuntimeError(f"calibration: {name} no longer reads {self.same_as[name]}'s input")
                return
            self._seen[id(x)] = (weakref.ref(x), name)
            sequences = x.shape[0] if x.dim() == 3 else 1
            if x.dim() == 3 and real is not None and real.shape == x.shape[:2]:
                x = x[real]  # (N, in) real tokens
            self.stats[name].add(x.reshape(-1, x.shape[-1]), sequences)

        return hook

    def finish(self) -> dict[str, InputStats]:
        """The hooks removed -> every Linear's statistics, the shared ones copied."""
        self.close()
        for name, first in self.same_as.items():
            self.stats[name] = self.stats[first].copy()
        return self.stats

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self._seen = [], {}


def linears_under(module: nn.Module, prefix: str, names: set[str]) -> dict[str, nn.Linear]:
    """The Linears of `module` whose weights are in `names` (full addresses, `enc.0.ff.fc1`)."""
    out = {}
    for n, m in module.named_modules():
        full = f"{prefix}.{n}" if prefix and n else n or prefix
        if isinstance(m, nn.Linear) and f"{full}.weight" in names:
            out[full] = m
    return out


# --- the sequential pass ---------------------------------------------------------------------------------------------
@torch.no_grad()
def prune_sequentially(
    model: nn.Module, batches: Sequence[Batch], names: set[str], solve: Solve, full: bool, stream: Stream | None = None
) -> list[str]:
    """Prune every Linear whose weight is in `names` with `solve`, in forward order (see the module docstring).
    `full`: gather H = 2/n Σ x xᵀ (SparseGPT), else the squared column norms. `stream`: the weights come part by
    part (the inputs, then layer by layer; Linears outside the stacks are the caller's to refuse). -> the Linears'
    names in the order they were pruned."""
    was_training = model.training
    model.eval()
    pad = model.cfg.pad_id
    linears = linears_under(model, "", names)
    outside = [n for n in linears if not n.startswith(("enc.", "dec."))]
    before, after = split_outside(model, batches[0], linears, outside)
    done: list[str] = []
    bar = tqdm(total=len(linears), desc="one-shot pruning", unit="matrix", dynamic_ncols=True)

    def prune(group: dict[str, nn.Linear], stats: dict[str, InputStats]) -> None:
        for n, m in group.items():
            solve(n, m, stats.pop(n))  # each H freed once its matrix is pruned
            done.append(n)
            bar.update()
        release_memory()  # the statistics and the solver's copies handed back, once a group

    try:
        for n in before:
            prune({n: linears[n]}, whole_model_stats(model, batches, {n: linears[n]}, full))
        if stream is not None:
            stream.enter("inputs")
        srcs = [b["src"] for b in batches]
        src_real = [batch_real_tokens(b, pad) for b in batches]
        xs, self_masks = [], []
        for s, b in zip(srcs, batches, strict=True):
            x, m = model.encoder_inputs(s, types=b.get("types"))  # m: the key mask, with T5's position bias
            xs.append(x)
            self_masks.append(m)
            release_memory()  # the embedding's temporaries, between the kept outputs
        if not len(model.enc):  # decoder-only: every layer reads the stream before it, no memory, no key mask
            ropes = [(model.rope(0, s.size(1), x.dtype),) for s, x in zip(srcs, xs, strict=True)]
            same_positions = [lambda n, r=r: r for r in src_real]
            if stream is not None:  # the embeddings have done their part
                stream.leave("inputs")
            calibrate_stack(model.dec, "dec", names, xs, ropes, same_positions, full, prune, stream)
            xs = []
        masks = [model.key_mask(s) for s in srcs]
        on_source = [lambda n, r=r: r for r in src_real]
        calibrate_stack(model.enc, "enc", names, xs, [(m,) for m in self_masks], on_source, full, prune, stream)
        if len(model.dec) and len(model.enc):
            mems = [model.enc_norm(x) for x in xs]
            del xs
            tgt_real = [decoder_positions(b, pad) for b in batches]
            ys, dec_masks = [], []
            for b in batches:
                y, m = model.decoder_inputs(b["tgt_in"])  # m: None (causal), or T5's bias with the causal mask
                ys.append(y)
                dec_masks.append(m)
                release_memory()
            if stream is not None:
                stream.leave("inputs")
            # cross-attention keys and values read the encoder's memory: the source's real tokens
            positions = [
                lambda n, sr=sr, tr=tr: sr if n.endswith(("ea.k_proj", "ea.v_proj")) else tr
                for sr, tr in zip(src_real, tgt_real, strict=True)
            ]
            extra = [(mem, m, None, dm) for mem, m, dm in zip(mems, masks, dec_masks, strict=True)]
            calibrate_stack(model.dec, "dec", names, ys, extra, positions, full, prune, stream)
        for n in after:
            prune({n: linears[n]}, whole_model_stats(model, batches, {n: linears[n]}, full))
    finally:
        bar.close()
        model.train(was_training)
    return done


def calibrate_stack(
    stack: nn.ModuleList,
    side: str,
    names: set[str],
    xs: list[Tensor],
    extra: list[tuple[Any, ...]],
    positions: list[Callable[[str], Tensor | None]],
    full: bool,
    prune: Callable[[dict[str, nn.Linear], dict[str, InputStats]], None],
    stream: Stream | None = None,
) -> None:
    """One stack, layer by layer: each layer's Linears calibrated on its inputs `xs` (batch k: `layer(xs[k],
    *extra[k])`, the real positions of Linear n `positions[k](n)`) and pruned, then `xs` replaced, in place, by the
    pruned layer's outputs (one batch's activations more at a time, not the whole set's). `stream`: each layer's
    weights loaded before its turn and written out and released after."""
    for i, layer in enumerate(stack):
        if stream is not None:
            stream.enter(f"{side}.{i}")
        group = linears_under(layer, f"{side}.{i}", names)
        real = [{n: where(n) for n in group} for where in positions]
        stats = layer_stats(group, full, real, lambda k, f=layer: f(xs[k], *extra[k]))
        prune(group, stats)
        del stats
        for k in range(len(xs)):
            xs[k] = layer(xs[k], *extra[k])
        release_memory()  # the layer's temporaries (each batch's reuses the last one's freed memory)
        if stream is not None:
            stream.leave(f"{side}.{i}")


def layer_stats(
    group: dict[str, nn.Linear], full: bool, real: list[dict[str, Tensor | None]], run: Callable[[int], Any]
) -> dict[str, InputStats]:
    """Run `run(k)` for every calibration batch k with hooks on `group`: the Linears' input statistics."""
    rec = Recorder(group, full)
    try:
        for k, r in enumerate(real):
            rec.start(r)
            run(k)
    finally:
        rec.close()
    return rec.finish()


def whole_model_stats(
    model: nn.Module, batches: Sequence[Batch], group: dict[str, nn.Linear], full: bool
) -> dict[str, InputStats]:
    """A Linear outside the stacks: its inputs over a full forward pass of every batch (the model's own loss)."""
    pad = model.cfg.pad_id
    real = []
    for b in batches:
        real.append(dict.fromkeys(group, batch_real_tokens(b, pad)))
    return layer_stats(group, full, real, lambda k: model.example_losses(batches[k]))


def split_outside(
    model: nn.Module, batch: Batch, linears: dict[str, nn.Linear], outside: list[str]
) -> tuple[list[str], list[str]]:
    """The Linears outside the stacks that the forward pass calls before the first stack layer, and after it,
    each in call order (found by one forward pass of `batch` with hooks)."""
    if not outside:
        return [], []
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.append(n)) for n, m in linears.items()]
    try:
        model.example_losses(batch)
    finally:
        for h in handles:
            h.remove()
    first_block = next((k for k, n in enumerate(calls) if n.startswith(("enc.", "dec."))), len(calls))
    seen = list(dict.fromkeys(calls))
    before = [n for n in seen if n in outside and calls.index(n) < first_block]
    after = [n for n in seen if n in outside and n not in before]
    missing = [n for n in outside if n not in seen]
    if missing:
        raise UserError(f"one-shot pruning: {', '.join(missing)} is not called by the model's forward pass")
    return before, after
