"""Inference speed of structurally pruned runs against their dense start, at several batch sizes, on this machine.

    python -m experiments.structured.speed DENSE_RUN RUN [RUN ...] --out results/speed.json

Each pruned run's tested model and the dense run's score (decode, for translation: the run's beam) the first
`--sentences` test examples at each batch size, interleaved `--repeats` times (the median kept), by
prunelab.studies.speed.speed_by_batch_size; on a CPU one thread, so that two lanes of the machine do not meet;
with --device cuda on the GPU, under bf16 autocast (the issue's GPU speed-ups).
With --teacher-forced (translation), one forward pass over source and reference instead of decoding: the model's
own compute, without the beam search's per-step work (its "score" columns are then 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from prunelab.scoring.variants import DecodeSettings
from prunelab.studies.speed import speed_by_batch_size
from prunelab.training import load_run


class TeacherForced:
    """A scorer that only times: the model's logits for every reference position, in one pass per batch."""

    name = "teacher-forced"

    def score(self, model: Any, batches: Sequence[dict[str, Any]]) -> float:
        for b in batches:
            model(b["src"], b["tgt_in"])  # (B, T, V)
        return 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dense", type=Path)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--teacher-forced", action="store_true", help="time a forward pass, not decoding (translation)")
    p.add_argument("--device", default="cpu", help="cpu (one thread) or cuda (bf16 autocast)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    elif not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise SystemExit(f"error: --device {args.device}: this machine has no such device (cpu or cuda)")
    dense = load_run(args.dense, data=True)
    dense.model.to(args.device)
    precision = (
        torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda") else contextlib.nullcontext()
    )
    scorer: Any = (
        TeacherForced()
        if args.teacher_forced
        else dense.task_class.scorer(dense.datamodule, DecodeSettings(beam_size=args.beam_size))
    )
    table = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for run in args.runs:
        if run.name in table:
            continue  # measured already: the script resumes
        pruned = load_run(run).model.to(args.device)
        with torch.inference_mode(), precision:
            rows = speed_by_batch_size(
                dense.model,
                pruned,
                dense.datamodule,
                scorer,
                args.batch_sizes,
                args.sentences,
                args.repeats,
                device=args.device,
            )
        table[run.name] = {
            "dense": str(args.dense),
            "device": args.device,
            "threads": torch.get_num_threads() if args.device == "cpu" else None,
            "measures": scorer.name if args.teacher_forced else "decoding",
            "beam_size": None if args.teacher_forced else args.beam_size,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2) + "\n")
        print(run.name, " ".join(f"b{r['batch_size']}: {r['speedup']:.2f}x" for r in rows), flush=True)


if __name__ == "__main__":
    main()
