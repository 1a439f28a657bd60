"""One-shot pruning (pruner=oneshot): how long SparseGPT and Wanda take to prune a BERT-base-shaped encoder (random
weights: 12 layers of width 768, 3,072-wide feed-forward, 30,522-token vocabulary) from 128 calibration sequences of
128 tokens, with the peak memory of the pruning as a ratio to the model's own memory (goal: at most 1.5); and the
SparseGPT solve of one 768 x 3,072 matrix against a straightforward dense implementation of the same algorithm
(every removed weight's update applied to the whole rest of its row at once, no lazy column blocks; goal >= 1),
the two giving the same weights."""

from __future__ import annotations

import time
from typing import Any

import torch
from harness import Figure, interleave, paired, seconds, spread
from pretrained import Progress
from torch import Tensor

from prunelab.models import build_classifier
from prunelab.pruning.calibration import peak_memory, prune_sequentially
from prunelab.pruning.masks import prunable_weights
from prunelab.pruning.oneshot import OneShotPruner
from prunelab.pruning.solvers import (
    damped,
    inverse_cholesky,
    sparsegpt,
)

SECTION = "oneshot"
BERT_BASE = {
    "vocab_size": 30522,
    "d_model": 768,
    "n_heads": 12,
    "d_ff": 3072,
    "enc_layers": 12,
    "max_len": 512,
    "dropout": 0.1,
    "pre_norm": False,
    "norm_eps": 1e-12,
    "activation": "gelu",
    "embed_scale": False,
    "positions": "learned",
    "type_vocab_size": 2,
    "embed_norm": True,
}


def encoder(changes: dict[str, Any] | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_classifier(2, pooler="tanh", **{**BERT_BASE, **(changes or {})}).eval()


def calibration(n: int, seq: int, batch: int, vocab: int) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        src = torch.randint(1000 if vocab > 2000 else 4, vocab, (b, seq), generator=g)
        src[:, 0] = 101 if vocab > 2000 else 1
        out.append({"src": src, "label": torch.randint(0, 2, (b,), generator=g)})
    return out


def prune_encoder(
    n: int = 128, seq: int = 128, batch: int = 4, reps: int = 1, changes: dict[str, Any] | None = None
) -> list[Figure]:
    done = Progress()
    out: list[Figure] = []
    for method in ("sparsegpt", "wanda"):
        times, ratios = [], []
        for _ in range(reps):
            model = encoder(changes)
            batches = calibration(n, seq, batch, model.cfg.vocab_size)
            names = set(prunable_weights(model))
            model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            t = time.perf_counter()
            pruner = OneShotPruner(0.5, method=method)  # its solve: the code pruner=oneshot runs, masks included
            pruner.attach(model)
            with torch.no_grad():  # a run scores the dense model before pruning it: the runtime's one-time
                model.example_losses(batches[0])  # buffers exist before its pruning starts, as here
            with peak_memory(torch.device("cpu")) as mem:
                prune_sequentially(model, batches, names, pruner.solve, full=method == "sparsegpt")
            times.append(time.perf_counter() - t)
            ratios.append((model_bytes + mem["extra_bytes"]) / model_bytes)
            sparsity = sum(int((model.get_parameter(k) == 0).sum()) for k in names) / sum(
                model.get_parameter(k).numel() for k in names
            )
            del model, batches, pruner
            done(f"{method}: {times[-1]:.0f} s, peak {ratios[-1]:.2f}x the model, sparsity {sparsity:.3f}")
        shape = f"{n} x {seq} calibration tokens"
        name = f"{method} one-shot 50% of a BERT-base-shaped encoder ({shape}): seconds"
        out.append(spread(SECTION, name, times, unit="s"))
        out.append(
            spread(
                SECTION,
                f"{method}: peak memory while pruning / the model's own memory",
                ratios,
                goal=1.5,
                lower_is_better=True,
                note="resident memory, sampled every 5 ms: the model plus what pruning added at its peak",
            )
        )
    return out


def dense_sparsegpt(weight: Tensor, h: Tensor, removed: Tensor, damp: float = 0.01) -> Tensor:
    """The straightforward implementation: for every column j, each removed weight's OBS update is applied to the
    whole rest of its row at once (rows x (cols - j) per column), no blocks."""
    w = weight.float().clone()
    u = inverse_cholesky(damped(h, damp, torch.float32), inplace=True)
    for j in range(w.shape[1]):
        e = torch.where(removed[:, j], w[:, j], 0.0) / u[j, j]
        w[:, j:] -= e[:, None] * u[j, j:][None, :]
        w[:, j] = torch.where(removed[:, j], 0.0, w[:, j])
    return w


def layer_solve(rows: int = 768, cols: int = 3072, tokens: int = 4096, reps: int = 3) -> list[Figure]:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g)
    h = x.T @ x
    _, removed = sparsegpt(w, h, 0.5)
    ours = sparsegpt(w, h, 0.5, mask=removed)[0]
    plain = dense_sparsegpt(w, h, removed)
    diff = float((ours - plain).abs().max() / w.abs().max())
    r = interleave(
        {
            "dense": seconds(lambda: dense_sparsegpt(w, h, removed)),
            "prunelab": seconds(lambda: sparsegpt(w, h, 0.5, mask=removed)),
        },
        reps=reps,
    )
    return [
        paired(
            SECTION,
            f"SparseGPT solve of a {rows} x {cols} matrix: straightforward dense / prunelab (lazy column blocks)",
            r["dense"],
            r["prunelab"],
            goal=1.0,
        ),
        Figure(SECTION, "SparseGPT solve: max |weight difference| / max |weight|, dense vs prunelab", diff, unit=""),
    ]
