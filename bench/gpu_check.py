"""`make gpu-check`: the GPU checks of issue 40 as one prepared script for a lent GPU machine (at most 8 minutes of
one H100), writing bench/RESULTS_gpu.md and bench/results_gpu.json. Every step runs in its own try/except (and under
its own time limit): a step that fails is reported with its error line, and the steps after it still run.

1. mfu: transformer_base trained under the Trainer with hardware=gpu (bf16-mixed), the bench's own training step
   (bench/training.py: `timed_fit`, FLOPs by FlopCounterMode over the very batches timed, real tokens only): model
   FLOPs per step / (step time x the device's datasheet dense bf16 peak); goal 0.40.
2. sparse24: the `sparse24` bench section (bench/semi_structured.py: dense / 2:4 time of a 768 x 3,072 Linear and a
   BERT-base-shaped encoder in fp16) with its crossover batch; and a 2:4 export of transformer_base (magnitude 2:4
   masks, packed by the export's own `pack_2of4`) read back by `prunelab.export.load_2of4` against the same masked
   model dense in fp16: their outputs, and dense / 2:4 time per batch with the crossover batch.
3. rope: a Llama-3-shaped CausalLM cast to bf16 (and to fp16) keeps its rotary frequencies fp32 (CausalLM._apply):
   its cos/sin tables at late positions must equal the fp32 model's tables cast, bit for bit; what a bf16 copy of
   the frequencies would give beside them.
4. oneshot_1b: SparseGPT 50% of a random Llama-shaped model of 1.24B parameters (Llama 3.2 1B's shape), calibrated
   on 32 x 2,048 random tokens, written as a Hugging Face folder and pruned layer-streamed (`pruner.stream`, issue 40
   item 1: prunelab.pruning.stream.stream_prune, one layer at a time on the GPU) when this tree has it, then in memory
   (prunelab's one-shot path with the whole model on the GPU): time and peak GPU memory of each
   (torch.cuda.max_memory_allocated), the sparsity, and whether the two give the same masks and weights. Without
   streaming in the tree, the in-memory path alone, and the results say so.
5. fsdp: `python train.py hardware=fsdp` of a tiny model for 2 steps, in a subprocess: exit status, the loss of each
   step, and the error line of a failure.

    python bench/gpu_check.py             # on a CUDA GPU: bench/RESULTS_gpu.md and bench/results_gpu.json
    python bench/gpu_check.py --dry-run   # every step on the CPU at the smallest size (seconds; `make test` runs it)
    python bench/gpu_check.py --steps rope,fsdp --out /tmp/gpu

On a GPU machine whose python3 has torch with CUDA and lightning but not hydra-core/omegaconf (the lent machines'
image), `make gpu-site` here copies those pure-Python packages into .gpu-site/, which this script puts first on its
path (and on train.py's in step 5) when its python has no hydra; prunelab itself comes from src/.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GPU_SITE = ROOT / ".gpu-site"


def _find_packages() -> None:
    """prunelab from src/ when it is not installed; hydra-core, omegaconf and antlr4 from .gpu-site/ (`make gpu-site`)
    when this python has no hydra: all three from there, first on the path, since hydra 1.3 needs antlr4 4.9 and
    another version installed beside it breaks omegaconf's grammar ("Could not deserialize ATN")."""
    if importlib.util.find_spec("prunelab") is None:
        sys.path.insert(0, str(ROOT / "src"))
    if importlib.util.find_spec("hydra") is None and GPU_SITE.is_dir():
        sys.path.insert(0, str(GPU_SITE))


_find_packages()
try:
    import semi_structured
    from harness import Figure, build_run, compose, first_batches, interleave, target_tokens
    from omegaconf import OmegaConf
    from training import bf16_peak, matmul_peak, synchronize, timed_fit, train_flops

    from prunelab.errors import UserError
    from prunelab.export import load_2of4
    from prunelab.hf.causal_lm import causal_lm_config
    from prunelab.models.causal_lm import CausalLM
    from prunelab.models.positions import rope_tables
    from prunelab.models.semi_structured import FORMAT_2OF4, cuda_2of4_problem, pack_2of4
    from prunelab.pruning import NoPruner
    from prunelab.pruning.base import mask_buffer
    from prunelab.pruning.calibration import prune_sequentially
    from prunelab.pruning.masks import prunable_weights
    from prunelab.pruning.memory import peak_memory
    from prunelab.pruning.oneshot import OneShotPruner
    from prunelab.training.build import build_model
except ImportError as e:  # one line that says what to do, not a traceback
    raise SystemExit(
        f"gpu_check: {e}. On a GPU machine without hydra-core/omegaconf: `make gpu-site` where .venv is, then carry "
        ".gpu-site to the machine"
    ) from None

STEPS_ORDER = ("mfu", "sparse24", "rope", "oneshot_1b", "fsdp")
# meta-llama/Llama-3.2-1B's config.json (the fields prunelab reads): 16 layers of width 2,048, 32 query and 8 K/V heads
# of 64, SwiGLU 8,192, vocabulary 128,256, tied embeddings, rotary base 500,000 with Llama 3.1's scaling; 1.24B
# parameters. The other shapes here change only the sizes.
LLAMA_1B = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "float32",
}
# the dry run's: one head of 64 (Llama 3.2's head width, so the same rotary frequencies), 2 layers
TINY = {"vocab_size": 500, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
TINY |= {"num_attention_heads": 1, "num_key_value_heads": 1, "bos_token_id": 1, "eos_token_id": 2}
# the smoke run's tiny translation set-up (bench/run.py's SMOKE)
SMOKE = ["experiment=smoke", "data.valid_size=8", "data.test_size=8", "task.beam_size=1", "task.max_len_a=0"]
SMOKE += ["task.max_len_b=4"]
FSDP_RUN = [
    "hardware=fsdp",
    *SMOKE,
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "logger=csv",
]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each step is: the GPU's (GPU) or the dry run's (DRY, tiny shapes, 1-2 iterations)."""

    mfu_overrides: tuple[str, ...]
    mfu_steps: int  # batches trained; the first mfu_skip untimed
    mfu_skip: int
    matmul_n: int
    s24_batches: tuple[int, ...]
    s24_seq: int
    s24_reps: int
    s24_changes: dict[str, Any] | None
    l24_changes: dict[str, Any]  # transformer_base's config changes for the load_2of4 comparison
    l24_vocab: int
    l24_batches: tuple[int, ...]
    l24_seq: int
    l24_reps: int
    rope_hf: dict[str, Any]  # LLAMA_1B's changes
    rope_positions: tuple[int, ...]  # first positions of the late windows compared
    rope_window: int
    llama_hf: dict[str, Any]  # LLAMA_1B's changes
    cal_windows: int
    cal_seq: int
    cal_batch: int
    fsdp_overrides: tuple[str, ...]
    fsdp_timeout: int
    budget_s: dict[str, int]  # each step's time limit (all of GPU's together: 8 minutes)


GPU = Sizes(
    # 34 batches of 32,768 tokens a side make one epoch of the default data: 30 fit in it, 20 of them timed
    mfu_overrides=("model=transformer_base", "data.max_tokens=32768", "model.dropout=0.1", "hardware=gpu"),
    mfu_steps=30,
    mfu_skip=10,
    matmul_n=8192,
    s24_batches=(1, 4, 16, 64, 256),
    s24_seq=128,
    s24_reps=5,
    s24_changes=None,
    l24_changes={},
    l24_vocab=32000,
    l24_batches=(1, 4, 16, 64, 256),
    l24_seq=128,
    l24_reps=5,
    rope_hf={"vocab_size": 1000, "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 1},
    rope_positions=(4096, 32768, 131072 - 256),
    rope_window=256,
    llama_hf={},
    cal_windows=32,
    cal_seq=2048,
    cal_batch=8,
    fsdp_overrides=(),
    fsdp_timeout=65,
    # expected about 35 + 30 + 2 + 150 + 30 s; the limits add up to 460 s, leaving the imports the rest of 8 minutes
    budget_s={"mfu": 75, "sparse24": 75, "rope": 15, "oneshot_1b": 225, "fsdp": 70},
)
DRY = Sizes(
    mfu_overrides=("model=transformer_tiny", "data.max_tokens=512", "hardware.precision=bf16-mixed", *SMOKE),
    mfu_steps=2,
    mfu_skip=1,
    matmul_n=256,
    s24_batches=(1, 4),
    s24_seq=16,
    s24_reps=1,
    s24_changes={"vocab_size": 3000, "d_model": 64, "n_heads": 2, "d_ff": 128, "enc_layers": 1},
    l24_changes={"d_model": 64, "n_heads": 2, "d_ff": 128, "enc_layers": 1, "dec_layers": 1},
    l24_vocab=500,
    l24_batches=(1, 2),
    l24_seq=8,
    l24_reps=1,
    rope_hf={**TINY, "num_hidden_layers": 1},
    rope_positions=(131072 - 16,),
    rope_window=16,
    llama_hf=TINY,
    cal_windows=4,
    cal_seq=32,
    cal_batch=2,
    fsdp_overrides=("hardware.accelerator=cpu", "hardware.devices=1", "hardware.precision=32-true"),
    fsdp_timeout=120,
    budget_s={"mfu": 120, "sparse24": 60, "rope": 60, "oneshot_1b": 60, "fsdp": 150},
)


@dataclasses.dataclass
class Context:
    device: str  # "cuda", or "cpu" in the dry run
    sizes: Sizes
    tmp: Path  # scratch space for files the steps write (the 2:4 export, the FSDP run)

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"


@dataclasses.dataclass
class StepResult:
    name: str
    status: str  # ok | partial (a part that needs what this machine lacks did not run) | failed
    seconds: float
    reason: str = ""  # partial: what did not run and why; failed: the error line
    figures: list[Figure] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "reason": self.reason,
            # NaN (a crossover never reached) as null: JSON has no NaN
            "figures": [
                {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in f.as_dict().items()}
                for f in self.figures
            ],
        }


Step = Callable[[Context, list[Figure]], str | None]  # appends its figures; returns why it ran only in part, or None


# --- 1. training MFU ------------------------------------------------------------------------------------------------
def device_peak(ctx: Context) -> tuple[str, float, float, str]:
    """(device name, the bf16 peak MFU divides by, the measured bf16 matmul FLOP/s, where the peak comes from)."""
    n = ctx.sizes.matmul_n
    measured = matmul_peak(n, reps=10 if ctx.gpu else 2, dtype=torch.bfloat16, device=ctx.device)
    if not ctx.gpu:
        return f"CPU ({platform.machine()})", measured, measured, f"the measured bf16 {n}^3 matmul (dry run)"
    name = torch.cuda.get_device_name()
    peak = bf16_peak(name)
    if peak is None:
        return name, measured, measured, f"{name} is not in bench/training.py's BF16_PEAKS: the measured matmul"
    return name, peak, measured, f"datasheet dense bf16 peak of {name}: {peak / 1e12:.1f} TFLOP/s"


def mfu(ctx: Context, rows: list[Figure]) -> str | None:
    s, sec = ctx.sizes, "mfu"
    cfg = compose(*s.mfu_overrides)
    dm, task = build_run(cfg, NoPruner())
    batches = first_batches(dm.train_dataloader(), s.mfu_steps)
    timed = batches[s.mfu_skip :]
    # the count is the same in any dtype (shapes only); under autocast it is quicker on the GPU
    with torch.autocast(ctx.device, dtype=torch.bfloat16):
        flops, real_share = train_flops(task, timed, ctx.device)
    model_flops = flops * real_share  # padding is not model work
    clock = timed_fit(task, cfg, batches)  # trainer.fit with the run's Trainer settings (hardware=gpu: bf16-mixed)
    elapsed = clock.end - clock.starts[s.mfu_skip]
    name, peak, measured, source = device_peak(ctx)
    achieved = model_flops / elapsed
    pad = task.model.cfg.pad_id
    tokens = sum(target_tokens(b, pad) for b in timed)
    how = (
        f"{cfg.model.d_model}-wide {cfg.model.enc_layers}+{cfg.model.dec_layers} layers, {cfg.data.max_tokens} tokens "
        f"a side per batch, {cfg.hardware.precision}, {len(timed)} timed steps after {s.mfu_skip}"
    )
    rows += [
        Figure(sec, "step time", elapsed / len(timed), unit="s", note=how),
        Figure(sec, "model FLOPs per step (real tokens)", model_flops / len(timed), unit="FLOP"),
        Figure(sec, "target tokens/s", tokens / elapsed, unit="tok/s"),
        Figure(sec, "model TFLOP/s", achieved / 1e12, unit="TFLOP/s"),
        Figure(sec, f"bf16 {s.matmul_n}^3 matmul TFLOP/s (measured)", measured / 1e12, unit="TFLOP/s", note=name),
        Figure(
            sec,
            "MFU: model FLOPs per step / (step time x peak bf16)",
            achieved / peak,
            unit="",
            goal=0.40 if ctx.gpu else None,
            note=f"peak assumed: {source}",
        ),
        Figure(sec, "model FLOP/s / measured bf16 matmul", achieved / measured, unit=""),
    ]
    return None


# --- 2. 2:4 semi-structured sparsity --------------------------------------------------------------------------------
BATCH = re.compile(r"^(?P<what>.+), batch (?P<b>\d+) x \d+: dense / 2:4 time$")


def crossover(figures: list[Figure]) -> dict[str, int | None]:
    """Per model of the `sparse24` figures, the first batch whose median dense / 2:4 time is above 1 (None: never)."""
    out: dict[str, int | None] = {}
    for f in figures:
        m = BATCH.match(f.name)
        if m:
            what = m["what"]
            out.setdefault(what, None)
            if out[what] is None and f.value > 1:
                out[what] = int(m["b"])
    return out


@torch.no_grad()
def magnitude_2of4(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask (True = kept) of the 2 largest |w| of every 4 consecutive inputs of each row."""
    rows, cols = weight.shape
    groups = weight.abs().reshape(rows, cols // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(rows, cols)


def write_2of4_export(ctx: Context) -> tuple[Path, torch.nn.Module]:
    """transformer_base (with the size's changes) built as a run builds it, 2:4 masks by magnitude on every prunable
    Linear, written as `prunelab export --format 2:4` writes it (export_2of4_run's blob, packed by pack_2of4, fp16).
    -> (the file, the masked model in fp32 on the CPU)."""
    s = ctx.sizes
    torch.manual_seed(0)
    model_cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf/model/transformer_base.yaml"), s.l24_changes)
    args = {"vocab_size": s.l24_vocab, "pad_id": 0}
    model = build_model(model_cfg, args).eval()
    masks = {n: magnitude_2of4(w) for n, w in prunable_weights(model).items() if w.shape[1] % 4 == 0}
    with torch.no_grad():
        for n, m in masks.items():
            model.get_parameter(n).mul_(m)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    packed, sparse, _ = pack_2of4(state, masks, torch.float16)
    raw = OmegaConf.to_container(model_cfg, resolve=True)
    blob = {
        "format": FORMAT_2OF4,
        "config": {},
        "model_config": {"model": raw, "args": args},
        "dtype": "fp16",
        "state": packed,
        "semi_structured": sparse,
    }
    path = ctx.tmp / "transformer_base.2of4.pt"
    torch.save(blob, path)
    return path, model


def sparse24(ctx: Context, rows: list[Figure]) -> str | None:
    """The section's figures, then load_2of4's; a failure of the first is reported after the second has run."""
    try:
        section(ctx, rows)
    except Exception as e:
        traceback.print_exc()
        problem = f"the sparse24 section failed: {type(e).__name__}: {e}".splitlines()[0]
        try:
            why = load_2of4_vs_dense(ctx, rows)
            problem += f"; {why}" if why else "; load_2of4 ran"
        except Exception as e2:
            traceback.print_exc()
            problem += f"; load_2of4: {type(e2).__name__}: {e2}".splitlines()[0]
        raise RuntimeError(problem) from None
    return load_2of4_vs_dense(ctx, rows)


def section(ctx: Context, rows: list[Figure]) -> None:
    """bench/semi_structured.py's `sparse24` section as `make bench` runs it, and its crossover batch per model."""
    s, sec = ctx.sizes, "sparse24"
    figures = semi_structured.linear_and_encoder(
        batches=s.s24_batches, seq=s.s24_seq, reps=s.s24_reps, changes=s.s24_changes
    )
    rows += figures
    for what, b in crossover(figures).items():
        rows.append(
            Figure(
                sec,
                f"crossover batch ({what}, sparse24 section)",
                b if b is not None else math.nan,
                unit="",
                note=f"2:4 faster from batch {b} x {s.s24_seq}" if b else "2:4 never faster at these batches",
            )
        )


def load_2of4_vs_dense(ctx: Context, rows: list[Figure]) -> str | None:
    """A 2:4 transformer_base through `load_2of4` against the same masked model dense in fp16: the logits agree, and
    dense / 2:4 time per batch with the crossover; on the CPU, load_2of4's refusal is the reason returned."""
    s, sec = ctx.sizes, "sparse24"
    path, model = write_2of4_export(ctx)
    problem = cuda_2of4_problem(ctx.device)
    if problem:  # the dry run: load_2of4 must refuse with one clear error, which is the reason reported
        try:
            load_2of4(path, ctx.device)
        except UserError as e:
            return f"sparse24 timings and load_2of4 not run: {e}"
        raise AssertionError(f"load_2of4 loaded on {ctx.device}, where {problem}")
    sparse = load_2of4(path, "cuda")
    dense = model.to("cuda", torch.float16).eval()
    n_sparse = sum(type(p).__name__.startswith("SparseSemiStructured") for p in sparse.parameters())
    g = torch.Generator(device="cuda").manual_seed(3)
    V, first = s.l24_vocab, None
    for b in s.l24_batches:
        src = torch.randint(4, V, (b, s.l24_seq), device="cuda", generator=g)
        tgt = torch.randint(4, V, (b, s.l24_seq), device="cuda", generator=g)
        with torch.inference_mode():
            out_d, out_s = dense(src, tgt), sparse(src, tgt)
            diff = float((out_s.float() - out_d.float()).abs().max() / out_d.float().abs().max())
            times = interleave(
                {
                    "dense": lambda src=src, tgt=tgt: semi_structured.cuda_time(lambda: dense(src, tgt)),
                    "2:4": lambda src=src, tgt=tgt: semi_structured.cuda_time(lambda: sparse(src, tgt)),
                },
                s.l24_reps,
            )
        ratios = [a / c for a, c in zip(times["dense"], times["2:4"], strict=True)]  # pairs timed back to back
        ratio = statistics.median(ratios)
        rows.append(
            Figure(
                sec,
                f"load_2of4 transformer_base, batch {b} x {s.l24_seq}: dense fp16 / 2:4 time",
                ratio,
                min(ratios),
                max(ratios),
                note=f"logits max abs(2:4 - dense) / max abs(dense) = {diff:.2e}",
            )
        )
        if diff > 2e-2:
            raise AssertionError(f"load_2of4's model differs from the dense fp16 model by {diff:.2e} at batch {b}")
        if first is None and ratio > 1:
            first = b
    rows.append(
        Figure(
            sec,
            "crossover batch (load_2of4 transformer_base vs fp16 dense)",
            first or math.nan,
            unit="",
            note=f"{n_sparse} semi-structured weights; "
            + (f"2:4 faster from batch {first}" if first else "2:4 never faster at these batches"),
        )
    )
    return None


# --- 3. rotary tables under a bf16 cast -----------------------------------------------------------------------------
def llama(hf: dict[str, Any], device: str | torch.device) -> CausalLM:
    """prunelab's network of a Llama config.json (the importer's causal_lm_config), random weights (seed 0), built
    on `device` (a GPU initialises 1.24B parameters in a moment; the CPU would take most of a minute)."""
    torch.manual_seed(0)
    with torch.device(device):
        return CausalLM(causal_lm_config(hf)).eval()


def rope(ctx: Context, rows: list[Figure]) -> str | None:
    """The cast model's tables at late positions against the fp32 model's, cast: bit-equal, or the step fails."""
    s, sec = ctx.sizes, "rope"
    fp32 = llama({**LLAMA_1B, **s.rope_hf}, ctx.device)
    T = s.rope_window
    unequal = []
    for dtype in (torch.bfloat16, torch.float16):
        cast = copy.deepcopy(fp32).to(dtype)  # Lightning's bf16-true is this .to(dtype) as well
        label = str(dtype).removeprefix("torch.")
        kept = cast.inv_freq.dtype == torch.float32 and torch.equal(cast.inv_freq, fp32.inv_freq)
        rows.append(Figure(sec, f"{label}-cast model keeps inv_freq fp32 and equal", float(kept), unit=""))
        if not kept:
            unequal.append(f"{label}: inv_freq is {cast.inv_freq.dtype}")
        for p in s.rope_positions:
            cos_c, sin_c = cast.rope(p, T, dtype)
            cos_r, sin_r = fp32.rope(p, T, torch.float32)
            diff = max(
                float((cos_c.float() - cos_r.to(dtype).float()).abs().max()),
                float((sin_c.float() - sin_r.to(dtype).float()).abs().max()),
            )
            # what a model whose frequencies were cast with its weights would compute instead
            cos_n, sin_n = rope_tables(fp32.inv_freq.to(dtype), p, T, dtype)
            naive = max(float((cos_n.float() - cos_r).abs().max()), float((sin_n.float() - sin_r).abs().max()))
            rows.append(
                Figure(
                    sec,
                    f"{label} model's cos/sin at positions {p}-{p + T - 1}: max abs difference to fp32's cast",
                    diff,
                    unit="",
                    note=f"must be 0; a {label} copy of inv_freq would be off by {naive:.3g}",
                )
            )
            if diff != 0.0:
                unequal.append(f"{label} at {p}: {diff:.3g}")
    if unequal:
        raise AssertionError(f"the cast model's rotary tables differ from fp32's: {'; '.join(unequal)}")
    return None


# --- 4. one-shot SparseGPT of a 1B Llama ----------------------------------------------------------------------------
def streaming() -> tuple[Any, str]:
    """(prunelab.pruning.stream, "") where this tree has layer-streamed one-shot (issue 40 item 1), else (None, why).
    Imported here, not at the top, so that the other steps run in a tree without it."""
    try:
        from prunelab.pruning import stream
    except ImportError as e:
        return None, f"layer streaming (pruner.stream) is not available in this tree ({e})"
    missing = [f for f in ("stream_prune", "output_keys", "load_streamed") if not hasattr(stream, f)]
    if missing:
        return None, f"prunelab.pruning.stream has no {', '.join(missing)}"
    return stream, ""


def llama_windows(ctx: Context, vocab: int) -> list[dict[str, torch.Tensor]]:
    """Random calibration windows (on the CPU): src, next-token target, every token real."""
    s = ctx.sizes
    g = torch.Generator().manual_seed(1)
    out = []
    for start in range(0, s.cal_windows, s.cal_batch):
        w = torch.randint(0, vocab, (min(s.cal_batch, s.cal_windows - start), s.cal_seq + 1), generator=g)
        out.append({"src": w[:, :-1], "target": w[:, 1:], "real": torch.ones(w.shape[0], s.cal_seq, dtype=torch.bool)})
    return out


def write_checkpoint(model: CausalLM, hf: dict[str, Any], folder: Path, keys: dict[str, str]) -> None:
    """`model` as a Hugging Face Llama folder: config.json and model.safetensors under the file's keys `keys`."""
    from safetensors.torch import save_file  # the hf extra, which layer streaming needs anyway

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    save_file(
        {keys[n]: p.detach().cpu().contiguous() for n, p in model.named_parameters()}, folder / "model.safetensors"
    )


def memory_rows(sec: str, label: str, mem: dict[str, Any], model_bytes: int, gpu: bool) -> list[Figure]:
    how = "allocator peak (torch.cuda.max_memory_allocated)" if gpu else "resident memory (RSS) of the process"
    return [
        Figure(sec, f"{label}: peak memory", mem["peak_bytes"] / 2**30, unit="GiB", note=how),
        Figure(
            sec,
            f"{label}: peak memory above its start",
            mem["extra_bytes"] / 2**30,
            unit="GiB",
            note=f"at the start {mem['start_bytes'] / 2**30:.2f} GiB",
        ),
        Figure(
            sec, f"{label}: peak above its start / the model's own memory", mem["extra_bytes"] / model_bytes, unit=""
        ),
    ]


def oneshot_1b(ctx: Context, rows: list[Figure]) -> str | None:
    """Streamed (when this tree has it) and in memory on the same weights and windows: time, peak memory, sparsity,
    and whether the two give the same masks and weights."""
    s, sec = ctx.sizes, "oneshot_1b"
    device = torch.device(ctx.device)
    hf = {**LLAMA_1B, **s.llama_hf}
    model = llama(hf, device)
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    batches = llama_windows(ctx, model.cfg.vocab_size)
    shape = f"{hf['num_hidden_layers']} x {hf['hidden_size']}, {params / 1e9:.2f}B parameters, fp32"
    cal = f"{s.cal_windows} x {s.cal_seq} random tokens in batches of {s.cal_batch}"
    where = "GPU" if ctx.gpu else "CPU (dry run)"
    rows.append(Figure(sec, f"random Llama ({shape}): model's own memory", model_bytes / 2**30, unit="GiB", note=cal))
    stream, why_not = streaming()
    problems: list[str] = []
    if stream is not None:
        folder, out = ctx.tmp / "llama", ctx.tmp / "llama-pruned"
        try:  # a failure here is reported after the in-memory pruning has still run
            t = time.perf_counter()
            write_checkpoint(model, hf, folder, stream.output_keys(hf))
            model.to("cpu")  # off the device while the streamed pruning runs, for the in-memory pruning after it
            if ctx.gpu:
                torch.cuda.empty_cache()
            rows.append(Figure(sec, "checkpoint written (model.safetensors)", time.perf_counter() - t, unit="s"))
            details = stream.stream_prune(OneShotPruner(0.5, method="sparsegpt"), folder, out, batches, device)
            rows.append(
                Figure(
                    sec,
                    "streamed SparseGPT 50%: seconds",
                    details["seconds"],
                    unit="s",
                    note=f"pruner.stream: {details['stream']['parts']} parts, one at a time on the {where}",
                )
            )
            rows += memory_rows(sec, "streamed", details["memory"], model_bytes, ctx.gpu)
        except Exception as e:
            traceback.print_exc()
            problems.append(f"the streamed pruning failed: {type(e).__name__}: {e}".splitlines()[0])
            stream = None
        finally:
            model.to(device)
    pruner = OneShotPruner(0.5, method="sparsegpt")  # the solve pruner=oneshot runs, masks included
    pruner.attach(model)
    names = set(prunable_weights(model))
    data = [{k: v.to(device) for k, v in b.items()} for b in batches]
    synchronize()
    t = time.perf_counter()
    with peak_memory(device) as mem:
        prune_sequentially(model, data, names, pruner.solve, full=True)
    synchronize()
    note = f"the whole model on the {where}" + ("" if stream is not None else f"; {why_not}")
    rows.append(Figure(sec, "in-memory SparseGPT 50%: seconds", time.perf_counter() - t, unit="s", note=note))
    rows += memory_rows(sec, "in memory", mem, model_bytes, ctx.gpu)
    zeros = sum(int((model.get_parameter(n) == 0).sum()) for n in names)
    sparsity = zeros / sum(model.get_parameter(n).numel() for n in names)
    rows.append(Figure(sec, "sparsity of the pruned matrices", sparsity, unit="", note=f"{len(names)} matrices"))
    if abs(sparsity - 0.5) > 1e-3:
        problems.append(f"SparseGPT 50% left a sparsity of {sparsity:.4f}")
    if stream is not None:
        weights, masks = stream.load_streamed(out, sorted(names), device)
        own = {n: getattr(pruner, mask_buffer(n)).bool() for n in names}
        mask_diff = [n for n in names if not torch.equal(masks[n].bool(), own[n])]
        weight_diff = [n for n in names if not torch.equal(weights[n], model.get_parameter(n))]
        rows += [
            Figure(
                sec,
                "matrices whose streamed mask differs from in-memory's",
                len(mask_diff),
                unit="",
                note=f"of {len(names)}; must be 0",
            ),
            Figure(
                sec,
                "matrices whose streamed weights differ from in-memory's",
                len(weight_diff),
                unit="",
                note=f"of {len(names)}; must be 0 (bit for bit)",
            ),
        ]
        if mask_diff or weight_diff:
            problems.append(f"streamed != in memory: masks of {len(mask_diff)}, weights of {len(weight_diff)} matrices")
    if problems:
        raise RuntimeError("; ".join(problems))
    return None if stream is not None else why_not


# --- 5. FSDP --------------------------------------------------------------------------------------------------------
def child_pythonpath() -> str:
    """train.py's path: src/ (prunelab), and .gpu-site/ when this process took hydra from there."""
    parts = [str(GPU_SITE)] if str(GPU_SITE) in sys.path else []
    parts.append(str(ROOT / "src"))
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(parts)


def error_line(text: str) -> str:
    """The last line of a failed run's output that names an error (else its last non-empty line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    named = [ln for ln in lines if re.search(r"(Error|Exception|error:|Could not)", ln)]
    return (named or lines or ["(no output)"])[-1][:400]


def step_losses(run: Path) -> dict[int, float]:
    """step -> train/loss from the CSV logger's metrics.csv of a run folder (empty when there is none)."""
    out: dict[int, float] = {}
    for path in sorted(run.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/loss") and row.get("step") not in (None, ""):
                    out[int(row["step"])] = float(row["train/loss"])
    return out


def fsdp(ctx: Context, rows: list[Figure]) -> str | None:
    s, sec = ctx.sizes, "fsdp"
    run = ctx.tmp / "fsdp"
    cmd = [sys.executable, "train.py", *FSDP_RUN, *s.fsdp_overrides, f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONPATH": child_pythonpath(), "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    env.setdefault("WANDB_MODE", "disabled")
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=s.fsdp_timeout)
    wall = time.perf_counter() - t
    command = " ".join(["python train.py", *FSDP_RUN, *s.fsdp_overrides])
    rows.append(Figure(sec, "train.py exit status", proc.returncode, unit="", note=f"{wall:.0f} s: {command}"))
    for step, loss in sorted(step_losses(run).items()):
        rows.append(Figure(sec, f"train/loss at step {step}", loss, unit=""))
    results = run / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        rows.append(Figure(sec, "results.json written", 1.0, unit="", note=f"status {r.get('status')}"))
    if proc.returncode != 0:
        raise RuntimeError(f"train.py exited {proc.returncode}: {error_line(proc.stderr + proc.stdout)}")
    return None


STEPS: dict[str, Step] = {"mfu": mfu, "sparse24": sparse24, "rope": rope, "oneshot_1b": oneshot_1b, "fsdp": fsdp}
TITLES = {
    "mfu": "transformer_base bf16-mixed training MFU",
    "sparse24": "2:4 crossover batch (sparse24 section, load_2of4 vs fp16 dense)",
    "rope": "RoPE tables of a bf16-cast model vs fp32",
    "oneshot_1b": "one-shot SparseGPT of a 1.24B random Llama",
    "fsdp": "2-step hardware=fsdp run",
}


# --- running the steps ----------------------------------------------------------------------------------------------
class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """StepTimeout in the main thread after `seconds` (SIGALRM; no limit where signals cannot be set)."""

    def expire(signum: int, frame: Any) -> None:
        raise StepTimeout(f"over its {seconds} s time limit")

    try:
        previous = signal.signal(signal.SIGALRM, expire)
    except (ValueError, AttributeError):  # not the main thread, or no SIGALRM
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_step(name: str, ctx: Context) -> StepResult:
    rows: list[Figure] = []
    t = time.perf_counter()
    try:
        with time_limit(ctx.sizes.budget_s[name]):
            partial = STEPS[name](ctx, rows)
        status, reason = ("partial", partial) if partial else ("ok", "")
    except Exception as e:  # the step is reported and the next one runs
        traceback.print_exc()
        status, reason = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:400]
    finally:
        gc.collect()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return StepResult(name, status, time.perf_counter() - t, reason, rows)


def machine(ctx: Context) -> dict[str, str]:
    out = {"device": "CPU (dry run)", "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    out["python"] = platform.python_version()
    if ctx.gpu:
        try:  # a GPU that fails here fails each step with its own error line; the file is still written
            props = torch.cuda.get_device_properties(0)
            out["device"] = torch.cuda.get_device_name()
            out["gpu memory"] = f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs"
        except Exception as e:
            out["device"] = f"CUDA GPU that does not answer ({type(e).__name__}: {e})"
    for name in ("lightning", "hydra", "omegaconf"):  # hydra and omegaconf may come from .gpu-site (no metadata)
        module = sys.modules.get(name) or importlib.import_module(name)
        out[name] = f"{module.__version__} ({Path(module.__file__).parent.parent})"
    return out


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and math.isnan(x):
        return "none"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 0.01 else f"{x:.3f}"


def cell(text: str) -> str:
    """Text for a markdown table cell: its own pipes (an error line's) escaped, on one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(meta: dict[str, Any], results: list[StepResult]) -> str:
    lines = [
        "# prunelab GPU check",
        "",
        f"Written by `{meta['command']}` on {meta['date']} in {meta['wall_s']:.0f} s"
        + (
            " (dry run: every step on the CPU at the smallest size; the numbers mean nothing)."
            if meta["dry_run"]
            else "."
        ),
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in meta["machine"].items()),
        "",
        "| step | what | status | seconds | reason |",
        "|---|---|---|---|---|",
        *(f"| {r.name} | {TITLES[r.name]} | {r.status} | {r.seconds:.1f} | {cell(r.reason)} |" for r in results),
        "",
        "| step | figure | value | [min, max] | goal | verdict | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for f in r.figures:
            rng = f"[{fmt(f.lo)}, {fmt(f.hi)}]" if f.lo is not None else ""
            goal = "" if f.goal is None else (f"< {fmt(f.goal)}" if f.lower_is_better else f">= {fmt(f.goal)}")
            unit = "" if f.unit in ("x", "") else f" {f.unit}"
            row = f"{cell(f.name)} | {fmt(f.value)}{unit} | {rng} | {goal} | {f.verdict} | {cell(f.note)}"
            lines.append(f"| {r.name} | {row} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at the smallest size")
    parser.add_argument("--steps", default="", help=f"comma-separated subset of {','.join(STEPS_ORDER)}")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for RESULTS_gpu.md and results_gpu.json (default: bench/; with --dry-run a temporary one)",
    )
    args = parser.parse_args(argv)
    chosen = [s for s in args.steps.split(",") if s] or list(STEPS_ORDER)
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        parser.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS_ORDER)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch sees none); --dry-run runs every step on the CPU", file=sys.stderr)
        return 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-dry-")) if args.dry_run else HERE)
    if args.dry_run and out.resolve() == HERE:
        parser.error("a dry run does not write its figures over the committed bench/RESULTS_gpu.md: --out elsewhere")
    os.environ.setdefault("WANDB_SILENT", "true")
    start = time.perf_counter()
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context("cpu" if args.dry_run else "cuda", DRY if args.dry_run else GPU, Path(tmp))
        meta_machine = machine(ctx)
        print(f"[gpu-check] {meta_machine['device']}, torch {torch.__version__}", file=sys.stderr, flush=True)
        for i, name in enumerate(chosen, 1):
            print(f"[gpu-check] {i}/{len(chosen)} {name}: {TITLES[name]} ...", file=sys.stderr, flush=True)
            r = run_step(name, ctx)
            results.append(r)
            for f in r.figures:
                print(f"[gpu-check]     {f.name}: {fmt(f.value)} {f.unit} {f.verdict}", file=sys.stderr, flush=True)
            tail = f": {r.reason}" if r.reason else ""
            print(f"[gpu-check] {name} {r.status} in {r.seconds:.1f} s{tail}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    meta = {
        "command": " ".join(["python bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "dry_run": args.dry_run,
        "wall_s": wall,
        "machine": meta_machine,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results_gpu.json").write_text(
        json.dumps({**meta, "steps": [r.as_dict() for r in results]}, indent=2, default=str) + "\n"
    )
    (out / "RESULTS_gpu.md").write_text(markdown(meta, results))
    print(f"[gpu-check] total {wall:.0f} s; written: {out / 'RESULTS_gpu.md'}, {out / 'results_gpu.json'}", flush=True)
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
