"""Training-side figures: the Trainer against a bare loop, masks against dense, prunelab against Hugging
Face MarianMT, model FLOPs utilisation against the measured matmul peak, and peak resident memory."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from harness import ROOT, Figure, build_run, compose, first_batches, interleave, paired, replay, spread, target_tokens

from prunelab.data.batching import to_device
from prunelab.pruning import MagnitudePruner, NoPruner
from prunelab.training.budget import StepBudget
from prunelab.training.build import trainer_kwargs

Batch = dict[str, Any]


class StepClock(L.Callback):
    """Times steps inside trainer.fit: the start of every batch and the end of the last one."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        synchronize()
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        synchronize()
        self.end = time.perf_counter()


def synchronize() -> None:
    """Wait for the GPU's queued work (a clock read on the host would time only the launches); no-op on a CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed_fit(task: L.LightningModule, cfg: Any, batches: list[Batch]) -> StepClock:
    """trainer.fit over exactly `batches` with the run's Trainer settings (gradient clipping, logging every
    log_every_n_steps), validation, checkpoints and the progress bar off; -> the step times."""
    clock = StepClock()
    kwargs = trainer_kwargs(cfg)
    kwargs.update(
        max_steps=len(batches),
        val_check_interval=None,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    trainer = L.Trainer(**kwargs, logger=False, enable_checkpointing=False, callbacks=[clock])
    trainer.fit(task, train_dataloaders=replay(batches))
    return clock


def trainer_tokens_per_s(task: L.LightningModule, cfg: Any, batches: list[Batch], skip: int) -> float:
    """Target tokens/s of `timed_fit` over `batches`, the first `skip` steps untimed."""
    clock = timed_fit(task, cfg, batches)
    pad = task.model.cfg.pad_id
    return sum(target_tokens(b, pad) for b in batches[skip:]) / (clock.end - clock.starts[skip])


def bare_tokens_per_s(
    forward_loss: Any, params: list[torch.nn.Parameter], batches: list[Batch], skip: int, pad: int, task: Any
) -> float:
    """The same steps in a plain PyTorch loop: the task's optimizer and schedule, gradient clipping at 1."""
    with step_budget(task, len(batches)):
        opt_conf = task.configure_optimizers()
        opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
        start = 0.0
        for i, batch in enumerate(replay(batches)):
            if i == skip:
                start = time.perf_counter()
            loss = forward_loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        return sum(target_tokens(b, pad) for b in batches[skip:]) / (time.perf_counter() - start)


@contextlib.contextmanager
def step_budget(task: L.LightningModule, steps: int) -> Iterator[None]:
    """The task outside trainer.fit, told that its round is `steps` optimizer steps (its lr schedule follows the
    budget), as the round loop tells it (`use_step_budget`); its previous budget comes back after the block."""
    before = task.step_budget
    task.use_step_budget(StepBudget(max_steps=steps))
    try:
        yield
    finally:
        task.use_step_budget(before)


def framework_and_masks(steps: int, reps: int, overrides: Sequence[str] = ()) -> list[Figure]:
    """Goal 1 (Trainer / bare loop) and goal 2 (MP masks at 90% / dense), default config (with `overrides`),
    same batches."""
    cfg = compose(*overrides)
    dm, task = build_run(cfg, NoPruner())
    batches = first_batches(dm.train_dataloader(), steps)
    pad = dm.tokenizer.pad_id
    masked_pruner = MagnitudePruner(sparsity=0.9, initial_sparsity=0.9, start_step=0, end_step=0)
    masked = copy.deepcopy(task)
    masked.pruner = masked_pruner
    masked_pruner.attach(masked.model)
    masked_pruner.prune_to(masked.model, 0.9)  # the mask a finished MP schedule leaves: every step applies it
    skip = max(2, steps // 10)
    r = interleave(
        {
            "trainer": lambda: trainer_tokens_per_s(task, cfg, batches, skip),
            "bare": lambda: bare_tokens_per_s(task.loss, list(task.parameters()), batches, skip, pad, task),
            "masked": lambda: trainer_tokens_per_s(masked, cfg, batches, skip),
        },
        reps,
    )
    n = f"{steps - skip} steps of transformer_tiny, {cfg.data.max_tokens} tokens/batch"
    return [
        spread("training", "bare loop target tokens/s", r["bare"], unit="tok/s", note=n),
        paired("training", "framework: Trainer / bare loop", r["trainer"], r["bare"], goal=0.95, note=n),
        paired(
            "training",
            "masks: MP 90% / dense (both Trainer)",
            r["masked"],
            r["trainer"],
            goal=0.95,
            note="masks multiplied into gradients and weights at every step",
        ),
    ]


# --- against Hugging Face ------------------------------------------------------------------------------
def marian_like(model: Any, bos: int, eos: int) -> Any:
    """A MarianMT of the same shape as a prunelab Transformer (random weights, built from a config)."""
    from transformers import MarianConfig, MarianMTModel

    c = model.cfg
    config = MarianConfig(
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        encoder_layers=c.enc_layers,
        decoder_layers=c.dec_layers,
        encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        activation_function="relu",
        dropout=c.dropout,
        attention_dropout=0.0,
        activation_dropout=c.dropout,  # prunelab drops out the FF activation too (as tensor2tensor does)
        max_position_embeddings=c.max_len,
        pad_token_id=c.pad_id,
        decoder_start_token_id=bos,
        eos_token_id=eos,
        forced_eos_token_id=None,
        scale_embedding=True,
    )
    torch.manual_seed(0)
    return MarianMTModel(config)


def hf_training(model_name: str, steps: int, reps: int, overrides: Sequence[str] = ()) -> list[Figure]:
    """Goal 3, training: the same bare loop, batches, loss and optimizer for both models."""
    cfg = compose(f"model={model_name}", *overrides)
    dm, task = build_run(cfg, NoPruner())
    tok = dm.tokenizer
    batches = first_batches(dm.train_dataloader(), steps)
    hf = marian_like(task.model, tok.bos_id, tok.eos_id).train()
    hf_task = copy.deepcopy(task)
    hf_task.model = hf  # the task's optimizer settings over HF's parameters

    def hf_loss(batch: Batch) -> torch.Tensor:
        src, tgt_in = batch["src"], batch["tgt_in"]
        logits = hf(input_ids=src, attention_mask=src.ne(tok.pad_id), decoder_input_ids=tgt_in, use_cache=False).logits
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["tgt_out"].flatten(), ignore_index=tok.pad_id, label_smoothing=0.1
        )

    skip = max(2, steps // 10)
    r = interleave(
        {
            "prunelab": lambda: bare_tokens_per_s(task.loss, list(task.parameters()), batches, skip, tok.pad_id, task),
            "hf": lambda: bare_tokens_per_s(hf_loss, list(hf.parameters()), batches, skip, tok.pad_id, hf_task),
        },
        reps,
    )
    p_ours = sum(p.numel() for p in task.model.parameters())
    p_hf = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    note = (
        f"{model_name} shape; trainable parameters {p_ours:,} vs {p_hf:,} "
        "(prunelab is pre-norm, with a final LayerNorm per stack)"
    )
    return [
        paired(
            "vs HF", f"training tok/s: prunelab / MarianMT ({model_name})", r["prunelab"], r["hf"], goal=1.0, note=note
        )
    ]


# --- model FLOPs utilisation ---------------------------------------------------------------------------
def matmul_peak(n: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """FLOP/s of the fastest of `reps` n x n matmuls in `dtype` on `device` (after a warm-up; a CPU's threads all)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    synchronize()
    best = min(_time(lambda: (torch.mm(a, b), synchronize())) for _ in range(reps))
    return 2 * n**3 / best


def _time(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def train_flops(task: Any, batches: list[Batch], device: str = "cpu") -> tuple[float, float]:
    """(FLOPs of forward + backward over `batches` by torch's FlopCounterMode, real / padded tokens), counted with
    the task's model on `device` (the count is the same anywhere; a GPU only makes it quicker)."""
    from torch.utils.flop_counter import FlopCounterMode

    flops, real, padded = 0, 0, 0
    task.to(device)
    for b in batches:
        b = to_device(b, device)
        with FlopCounterMode(display=False) as counter:
            task.loss(b).backward()
        flops += counter.get_total_flops()
        real += b["n_tokens"]
        padded += b["src"].numel() + b["tgt_in"].numel()
    task.zero_grad(set_to_none=True)
    return flops, real / padded


def mfu(
    model_name: str, max_tokens: int, steps: int, overrides: Sequence[str] = (), matmul_n: int = 2048
) -> list[Figure]:
    """Goal 5: model FLOPs per second of `model_name` training under the Trainer over the measured fp32
    matmul peak (`matmul_n`^3 matmuls). FLOPs of one step are counted by torch's FlopCounterMode (forward +
    backward, every matmul and attention) on the very batches trained on, scaled to real tokens (padding is not
    model work)."""
    cfg = compose(f"model={model_name}", f"data.max_tokens={max_tokens}", "model.dropout=0.1", *overrides)
    dm, task = build_run(cfg, NoPruner())
    batches = first_batches(dm.train_dataloader(), steps + 1)
    flops, real_share = train_flops(task, batches[1:])
    peak_before = matmul_peak(matmul_n)
    clock = timed_fit(task, cfg, batches)
    elapsed = clock.end - clock.starts[1]
    peak = max(peak_before, matmul_peak(matmul_n))
    achieved = flops * real_share / elapsed
    note = (
        f"{model_name}, {max_tokens} tokens/batch, {steps} steps; peak {peak / 1e9:.0f} GFLOP/s "
        f"(fp32 {matmul_n}^3 matmul, {torch.get_num_threads()} threads); padding {100 * (1 - real_share):.0f}% of "
        f"tokens, not counted"
    )
    return [
        Figure("machine", f"model GFLOP/s ({model_name} training)", achieved / 1e9, unit="GFLOP/s"),
        Figure("machine", f"MFU ({model_name}, CPU fp32)", achieved / peak, goal=0.35, note=note),
    ]


# dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, matched in this order against
# torch.cuda.get_device_name() (so "H100 PCIe" before "H100", the SXM part)
BF16_PEAKS = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)
GPU_MFU_GOAL = 0.40  # issue 27: transformer_base training in bf16-mixed, over the device's bf16 peak


def bf16_peak(device_name: str) -> float | None:
    """The datasheet's dense bf16 peak (FLOP/s) of a GPU by its name, or None for one not in BF16_PEAKS."""
    return next((peak for key, peak in BF16_PEAKS if key in device_name), None)


def gpu_mfu(model_name: str, max_tokens: int, steps: int, skip: int, overrides: Sequence[str] = ()) -> list[Figure]:
    """Model FLOPs utilisation of `model_name` training under the Trainer with hardware=gpu (bf16-mixed), over the
    device's datasheet bf16 peak (goal GPU_MFU_GOAL) and over a measured 8192^3 bf16 matmul. FLOPs are counted by
    FlopCounterMode on the very batches timed (the first `skip` steps untimed), real tokens only. Without a CUDA
    GPU: only the FLOPs per trained target token, and a note."""
    hardware = ["hardware=gpu"] if torch.cuda.is_available() else []
    if not hardware:  # the FLOPs per token only: one batch of at most 4,096 tokens, not a GPU's workload on a CPU
        max_tokens, steps, skip = min(max_tokens, 4096), 1, 0
    cfg = compose(f"model={model_name}", f"data.max_tokens={max_tokens}", "model.dropout=0.1", *hardware, *overrides)
    dm, task = build_run(cfg, NoPruner())
    batches = first_batches(dm.train_dataloader(), steps)
    device = "cuda" if hardware else "cpu"
    flops, real_share = train_flops(task, batches[skip:], device)
    pad = task.model.cfg.pad_id
    tokens = sum(target_tokens(b, pad) for b in batches[skip:])
    per_token = Figure(
        "gpu", f"training FLOPs per target token ({model_name})", flops * real_share / tokens, unit="FLOP"
    )
    if not hardware:
        per_token.note = "no CUDA GPU: no MFU measured"
        return [per_token]
    name = torch.cuda.get_device_name()
    clock = timed_fit(task, cfg, batches)
    achieved = flops * real_share / (clock.end - clock.starts[skip])
    matmul = matmul_peak(8192, reps=10, dtype=torch.bfloat16, device="cuda")
    peak = bf16_peak(name)
    note = f"{name}, {model_name}, {max_tokens} tokens/batch, bf16-mixed, {steps - skip} timed steps"
    out = [
        per_token,
        Figure("gpu", f"training model TFLOP/s ({model_name}, bf16-mixed)", achieved / 1e12, unit="TFLOP/s", note=note),
        Figure("gpu", "bf16 8192^3 matmul TFLOP/s", matmul / 1e12, unit="TFLOP/s", note=name),
        Figure("gpu", f"training MFU ({model_name}) vs measured bf16 matmul", achieved / matmul, unit="", note=note),
    ]
    if peak is not None:
        out.append(
            Figure(
                "gpu",
                f"training MFU ({model_name}) vs datasheet bf16 peak",
                achieved / peak,
                unit="",
                goal=GPU_MFU_GOAL,
                note=f"{note}; peak {peak / 1e12:.0f} TFLOP/s dense",
            )
        )
    return out


# --- memory --------------------------------------------------------------------------------------------
# the child reports its own peak: VmHWM of the memory map exec gave it (getrusage's ru_maxrss would also count
# the pages of this process it was forked from, which are large after the MFU section)
PEAK_REPORTER = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def report():
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    open(out, "w").write(hwm.split()[1])
atexit.register(report)
sys.argv[0] = "train.py"
runpy.run_path("train.py", run_name="__main__")
"""


def peak_rss_mib(*overrides: str) -> float:
    """Peak resident memory of `python train.py OVERRIDES` in a fresh process."""
    with tempfile.TemporaryDirectory() as d:
        peak = Path(d) / "peak_kib"
        cmd = [sys.executable, "-c", PEAK_REPORTER, str(peak), *overrides, "logger=none", f"hydra.run.dir={d}/run"]
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not peak.exists():
            raise RuntimeError(f"train.py {' '.join(overrides)} failed: {proc.stderr[-2000:]}")
        return int(peak.read_text()) / 1024


def memory(
    default_steps: int, base_steps: int | None = 3, base_model: str = "transformer_base", overrides: Sequence[str] = ()
) -> list[Figure]:
    """Peak resident memory of a default run and of a `base_model` run (base_steps=None: not run), with
    `overrides`, each in its own process."""
    small_eval = ["data.valid_size=16", "data.test_size=16", "task.beam_size=1"]
    default = peak_rss_mib(
        *overrides, f"trainer.max_steps={default_steps}", f"trainer.val_check_interval={default_steps}"
    )
    out = [
        Figure(
            "memory",
            "peak RSS, default run",
            default,
            unit="MiB",
            note=f"default config, {default_steps} steps, validation and test with beam 4 included",
        )
    ]
    if base_steps is None:
        return out
    base = peak_rss_mib(
        *overrides,
        f"model={base_model}",
        "data.max_tokens=4096",
        f"trainer.max_steps={base_steps}",
        f"trainer.val_check_interval={base_steps}",
        *small_eval,
    )
    out.append(
        Figure(
            "memory",
            f"peak RSS, {base_model} training",
            base,
            unit="MiB",
            note=f"4096 tokens/batch, {base_steps} steps, Adam; evaluation on 16 sentences",
        )
    )
    return out
