"""Analysis costs: Wang & Tu's contribution analysis in full-decode units on a trained default-config model,
and the inference speed-up of AttendOut's constant attention maps."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from harness import ROOT, Figure, interleave, paired, seconds


def trained_run(steps: int, overrides: Sequence[str] = (), folder: Path | None = None) -> Path:
    """A default-config run (with `overrides`) to analyse: `folder`, by default bench/.run<steps> (trained once for
    `steps` steps, then reused)."""
    run = folder or ROOT / "bench" / f".run{steps}"
    res = run / "results.json"
    if not res.exists() or json.loads(res.read_text())["status"] != "completed":
        cmd = [
            sys.executable,
            "train.py",
            *overrides,
            f"trainer.max_steps={steps}",
            "logger=none",
            f"hydra.run.dir={run}",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    return run


def components(
    train_steps: int, reps: int, warmup: int = 1, overrides: Sequence[str] = (), folder: Path | None = None
) -> list[Figure]:
    """The contribution analysis of every component (one ablation_bleu call) vs (N+1) full decodes of the
    validation set (the unit the component issue states its cost in), at the run's validation beam; the run as
    `trained_run(train_steps, overrides, folder)` trains it."""
    from prunelab.criteria.components import components_off
    from prunelab.models.addressing import component_names
    from prunelab.scoring.scores import corpus_bleu
    from prunelab.scoring.variants import ablation_bleu, decode_settings
    from prunelab.training import load_run

    run = load_run(trained_run(train_steps, overrides, folder), data=True)
    res, dm, model = run.results, run.datamodule, run.model
    tok, batches = dm.tokenizer, list(dm.val_dataloader())
    settings = decode_settings(res["config"], None)
    names = component_names(model)
    stopped: list[int] = []

    def analysis() -> None:
        stopped.append(len(ablation_bleu(model, batches, tok, settings, names).stopped))

    def separate() -> None:
        for n in names:
            with components_off(model, [n]):
                corpus_bleu(model, batches, tok, settings.beam_size, settings)

    full = seconds(lambda: corpus_bleu(model, batches, tok, settings.beam_size, settings))
    r = interleave({"full": full, "analysis": seconds(analysis), "separate": seconds(separate)}, reps, warmup)
    unit = [(len(names) + 1) * t for t in r["full"]]
    note = (
        f"{len(names)} components, beam {settings.beam_size}, {len(dm.examples['valid'])} validation sentences, "
        f"model trained {train_steps} steps; {stopped[-1]} ablations stopped early"
    )
    return [
        paired(
            "analysis",
            "contribution analysis / (N+1) full decodes",
            r["analysis"],
            unit,
            goal=0.6,
            lower_is_better=True,
            note=note,
        ),
        paired(
            "analysis",
            "N separate ablation decodes + 1 / (N+1) full decodes",
            [a + b for a, b in zip(r["separate"], r["full"], strict=True)],
            unit,
            note="the naive way, for comparison",
        ),
    ]


@torch.no_grad()
def attendout(reps: int, layers: int = 12, d_model: int = 256) -> list[Figure]:
    """AttendOut's structural pruning: inference examples/s of a 12-layer classifier (`layers`, width `d_model`)
    with all but 2 of its attention maps made constant (no Q/K, no scores) vs the unpruned model, batch 32 x 64
    tokens."""
    from prunelab.models import build_classifier
    from prunelab.models.surgery import make_uniform

    torch.manual_seed(0)
    dense = build_classifier(
        num_classes=3, vocab_size=8000, d_model=d_model, n_heads=4, d_ff=4 * d_model, enc_layers=layers, dropout=0.0
    ).eval()
    pruned = copy.deepcopy(dense)
    made = max(layers - 2, 1)
    make_uniform(pruned, [f"enc.{i}.sa" for i in range(made)])
    src = torch.randint(4, 8000, (32, 64), generator=torch.Generator().manual_seed(0))
    src[:, 0] = 1

    def three(m: torch.nn.Module) -> float:
        t = time.perf_counter()
        for _ in range(3):
            m(src)
        return time.perf_counter() - t

    r = interleave({"dense": lambda: three(dense), "pruned": lambda: three(pruned)}, reps)
    return [
        paired(
            "analysis",
            f"AttendOut {made}/{layers} maps constant: inference speed-up",
            r["dense"],
            r["pruned"],
            note=f"{layers}-layer classifier, d={d_model}, batch 32 x 64 tokens",
        )
    ]
