"""2:4 semi-structured sparsity on a GPU (`prunelab export --format 2:4`, prunelab.models.semi_structured): one
768 x 3,072 Linear and a BERT-base-shaped encoder (12 x 768, 3,072-wide feed-forward, random weights pruned 2:4 by
magnitude, fp16), each at token batches from 1 x 128 up, timed against the same model dense; the ratio dense time /
2:4 time per batch, and the first batch size from which 2:4 is faster. Timings need a CUDA GPU of compute capability
8.0 or more; without one the section reports only what it can compute anywhere: the fraction of the encoder's Linear
weights whose shape the kernels take."""

from __future__ import annotations

import copy
import statistics

import torch
from harness import Figure, interleave, spread
from oneshot import BERT_BASE

from prunelab.models import build_classifier
from prunelab.models.semi_structured import cuda_2of4_problem, fits_kernels, to_2of4
from prunelab.pruning.masks import prunable_weights

SECTION = "sparse24"


@torch.no_grad()
def prune_2of4(weight: torch.Tensor) -> None:
    """Keep the 2 largest |w| of every 4 consecutive inputs of each row (magnitude 2:4), in place."""
    rows, cols = weight.shape
    groups = weight.view(rows, cols // 4, 4)
    drop = groups.abs().argsort(dim=-1)[..., :2]
    groups.scatter_(-1, drop, 0.0)


def cuda_time(fn, reps: int = 20) -> float:
    """Seconds per call of fn on the GPU (CUDA events, after the launches are queued)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / reps


def linear_and_encoder(batches: tuple[int, ...] = (1, 4, 16, 64, 256), seq: int = 128, reps: int = 5,
                       changes: dict | None = None) -> list[Figure]:  # fmt: skip
    torch.manual_seed(0)
    shape = {**BERT_BASE, **(changes or {})}
    encoder = build_classifier(num_classes=2, **shape).eval()
    weights = prunable_weights(encoder)
    for w in weights.values():
        if w.shape[1] % 4 == 0:
            prune_2of4(w.data)
    taken = [n for n, w in weights.items() if fits_kernels(w.shape)]
    out = [
        Figure(SECTION, "encoder Linear weights whose shape the 2:4 kernels take", len(taken) / len(weights), unit="")
    ]
    problem = cuda_2of4_problem("cuda")
    if problem:
        out[0].note = f"no timings: {problem}"
        return out
    dense = encoder.to("cuda", torch.float16)
    sparse = copy.deepcopy(dense)
    to_2of4(sparse, taken)
    layer = torch.nn.Linear(shape["d_model"], shape["d_ff"], bias=True).to("cuda", torch.float16)
    prune_2of4(layer.weight.data)
    layer_sparse = copy.deepcopy(layer)
    to_2of4(layer_sparse, ["weight"])
    first = {}
    for what, d, s in (("Linear 768 x 3072", layer, layer_sparse), ("BERT-base encoder", dense, sparse)):
        for b in batches:
            if what.startswith("Linear"):
                x = torch.randn(b * seq, shape["d_model"], device="cuda", dtype=torch.float16)
            else:
                x = torch.randint(1000, shape["vocab_size"], (b, seq), device="cuda")
            with torch.inference_mode():
                times = interleave({"dense": lambda d=d, x=x: cuda_time(lambda: d(x)),
                                    "2:4": lambda s=s, x=x: cuda_time(lambda: s(x))}, reps)  # fmt: skip
            ratio = [a / c for a, c in zip(times["dense"], times["2:4"], strict=True)]
            out.append(spread(SECTION, f"{what}, batch {b} x {seq}: dense / 2:4 time", ratio))
            if statistics.median(ratio) > 1 and what not in first:
                first[what] = b
        note = f"2:4 faster from batch {first[what]}" if what in first else "2:4 never faster at these batches"
        out[-1].note = note
    return out
