"""fp32 against bf16-mixed on this machine: training and decoding throughput of the same model on the same
batches, with model FLOPs utilisation against both matmul peaks, measured in the same run."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
from harness import Figure, build_run, compose, first_batches, interleave, paired, seconds, spread
from torch.utils.flop_counter import FlopCounterMode
from training import matmul_peak, train_flops, trainer_tokens_per_s

from prunelab.pruning import NoPruner

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
BF16_GOAL = 2.0  # bf16-mixed training / fp32, asked where the bf16 peak is at least 4x the fp32 one
PEAK_RATIO_FOR_GOAL = 4.0
# below this bf16/fp32 matmul peak ratio the CPU has no bf16 units (it converts and computes in fp32): training and
# decoding in bf16 would only emulate them, for minutes, so those rows are skipped with the peaks as the reason
BF16_UNITS_RATIO = 2.0


def bf16_units(peak: dict[str, float], matmul_n: int) -> tuple[bool, str]:
    """(whether bf16 matmuls run at least BF16_UNITS_RATIO x the fp32 ones, the note giving both peaks)."""
    ratio = peak["bf16"] / peak["fp32"]
    note = (
        f"peaks: fp32 {peak['fp32'] / 1e9:.0f}, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s "
        f"({matmul_n}^3 matmul, {torch.get_num_threads()} threads; bf16/fp32 {ratio:.1f}x)"
    )
    return ratio >= BF16_UNITS_RATIO, note


def peaks(n: int = 2048) -> dict[str, float]:
    """FLOP/s of the fastest n^3 matmul in each dtype."""
    return {"fp32": matmul_peak(n, dtype=torch.float32), "bf16": matmul_peak(n, dtype=torch.bfloat16)}


def autocast(name: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()


def training_and_decoding(
    model_name: str,
    max_tokens: int,
    steps: int,
    reps: int,
    decode_batch: int,
    decode_tokens: int,
    overrides: Sequence[str] = (),
    matmul_n: int = 2048,
) -> list[Figure]:
    """`model_name` (config `overrides` added) trained and decoded in fp32 and in bf16-mixed; peaks of
    `matmul_n`^3 matmuls."""
    from generation import fixed_length

    before = peaks(matmul_n)
    units, note = bf16_units(before, matmul_n)
    if not units:  # measured first: nothing is trained or decoded in emulated bf16
        return [
            Figure(
                "precision",
                "bf16 matmul peak / fp32 matmul peak",
                before["bf16"] / before["fp32"],
                note=f"no bf16 units ({note}, under {BF16_UNITS_RATIO:.0f}x): bf16 training and decoding rows skipped",
            )
        ]
    overrides = [f"model={model_name}", f"data.max_tokens={max_tokens}", "model.dropout=0.1", *overrides]
    cfgs = {k: compose(*overrides, f"hardware.precision={v}") for k, v in PRECISIONS.items()}
    dm, task = build_run(cfgs["fp32"], NoPruner())
    batches = first_batches(dm.train_dataloader(), steps)
    skip = 2
    flops, real_share = train_flops(task, batches[skip:])
    tokens = sum(int((b["tgt_out"] != dm.tokenizer.pad_id).sum()) for b in batches[skip:])
    flops_per_token = flops * real_share / tokens  # model FLOPs (real tokens only) per target token trained
    tasks = {"fp32": task, "bf16": copy.deepcopy(task)}  # the same initial weights
    contenders: dict[str, Callable[[], float]] = {
        k: (lambda k=k: trainer_tokens_per_s(tasks[k], cfgs[k], batches, skip)) for k in PRECISIONS
    }
    r = interleave(contenders, reps)

    # decoding: greedy and beam 4 of exactly decode_tokens per sentence, model in eval mode, under autocast or not
    model = task.model.eval()
    src = first_batches(dm.val_dataloader(), 1)[0]["src"][:decode_batch]
    dec: dict[str, list[float]] = {}
    dec_flops: dict[int, float] = {}
    for beam in (1, 4):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fixed_length(model, src, decode_tokens, beam)
        dec_flops[beam] = counter.get_total_flops()

        def decode(k: str, beam: int = beam) -> None:
            with torch.no_grad(), autocast(k):
                fixed_length(model, src, decode_tokens, beam)

        times = interleave({k: seconds(lambda k=k: decode(k)) for k in PRECISIONS}, reps)
        dec.update({f"{k}@{beam}": v for k, v in times.items()})
    after = peaks(matmul_n)
    peak = {k: max(before[k], after[k]) for k in PRECISIONS}
    goal = BF16_GOAL if peak["bf16"] >= PEAK_RATIO_FOR_GOAL * peak["fp32"] else None
    note_peaks = bf16_units(peak, matmul_n)[1]
    shape = f"{model_name}, {max_tokens} tokens/batch, dropout 0.1, {steps - skip} timed steps"
    out = [
        Figure("precision", "bf16 matmul peak / fp32 matmul peak", peak["bf16"] / peak["fp32"], note=note_peaks),
        *(spread("precision", f"training target tok/s, {k}", r[k], unit="tok/s", note=shape) for k in PRECISIONS),
        paired(
            "precision",
            "training: bf16-mixed / fp32",
            r["bf16"],
            r["fp32"],
            goal=goal,
            note=f"{shape}; goal applies where the bf16 peak >= {PEAK_RATIO_FOR_GOAL:.0f}x the fp32 peak",
        ),
    ]

    def mfu(label: str, k: str, achieved: list[float]) -> list[Figure]:
        """Achieved FLOP/s over the peak of its own dtype, and bf16's also over the fp32 peak."""
        return [
            spread("precision", f"{label} MFU, {k} vs {pk} peak", [a / peak[pk] for a in achieved], unit="")
            for pk in (PRECISIONS if k == "bf16" else ("fp32",))
        ]

    for k in PRECISIONS:
        out += mfu("training", k, [v * flops_per_token for v in r[k]])
    for beam in (1, 4):
        name = "greedy" if beam == 1 else f"beam {beam}"
        note = f"{model_name}, batch {src.size(0)}, {decode_tokens} tokens each, KV cache"
        out.append(
            paired("precision", f"decoding {name}: bf16 / fp32", dec[f"fp32@{beam}"], dec[f"bf16@{beam}"], note=note)
        )
        for k in PRECISIONS:
            out += mfu(f"decoding {name}", k, [dec_flops[beam] / t for t in dec[f"{k}@{beam}"]])
    return out
