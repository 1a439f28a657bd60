"""`make bench`: prunelab against what a researcher would use instead and against the machine's own limit.

Every comparison runs in this one process, its contenders interleaved over several repetitions after a
warm-up, and is reported as the median of the per-repetition ratios with their min and max. Writes
bench/results.json and the table bench/RESULTS.md (machine, versions, date, goals and verdicts).

    python bench/run.py                 # the suite (under 30 minutes on 2 CPU cores)
    python bench/run.py --quick         # fewer steps and repetitions (under 5 minutes)
    python bench/run.py --paper         # paper-size models for the Hugging Face and MFU comparisons
    python bench/run.py --sections training,decoding
    python bench/run.py --smoke         # every section once at its smallest setting, about a minute: that each
                                        # runs and gives its figures (`make test` runs it); numbers mean nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import analysis
import export
import generation
import oneshot
import precision
import pretrained
import semi_structured
import torch
import training
from harness import Figure, in_child

HERE = Path(__file__).resolve().parent


def seq2seq_shapes(quick: bool) -> list[Figure]:
    """The T5-base and M2M100-418M rows of the `pretrained` section (issue 38): full depth in every mode, fewer
    steps and repetitions in quick mode (one training step of these sizes takes seconds on 2 cores). Alone, from
    bench/: `python -c "import run; print(*map(run.row, run.seq2seq_shapes(quick=True)), sep='\\n')"`."""
    q = quick
    return [
        *pretrained.t5_base(train_steps=1 if q else 2, train_reps=2 if q else 4, gen_reps=2 if q else 4),
        *pretrained.m2m100_418m(train_steps=1 if q else 2, train_reps=2 if q else 4, gen_reps=2 if q else 4),
    ]


def tagged(figures: list[Figure], tag: str) -> list[Figure]:
    """The figures with `tag` after their names (quick mode's cut-down shapes say so in every row)."""
    return [dataclasses.replace(f, name=f"{f.name} [{tag}]") for f in figures]


# quick mode (`--quick`, goal: under 5 minutes on 2 cores, every section): the pretrained and decoder-only shapes at
# 2 of their layers (each row says so), fewer steps and repetitions; the full run keeps the checkpoints' depths
QUICK_LAYERS = 2


def plan(quick: bool, paper: bool) -> dict[str, Callable[[], list[Figure]]]:
    """Section name -> what it measures, sized for the mode."""
    q = quick
    nmt = "transformer_base" if paper else "transformer_tiny"
    depth = f"quick: {QUICK_LAYERS} layers"
    L = QUICK_LAYERS
    return {
        "training": lambda: training.framework_and_masks(steps=10 if q else 60, reps=3 if q else 7),
        "hf": lambda: [
            *training.hf_training(nmt, steps=8 if q else 30, reps=2 if q else 5),
            *generation.hf_generation(
                nmt, steps=20 if q else 50, reps=2 if q else 3, batch=16 if paper else 32 if q else 64
            ),
        ],
        # BERT-base and opus-mt-en-de shapes in every mode; even repetition counts, so that each contender runs
        # first as often as second (interleave rotates the order), and more, shorter repetitions in the full run
        "pretrained": lambda: (
            [
                *tagged(
                    pretrained.bert_base(
                        train_steps=1, train_reps=2, infer_batches=1, infer_reps=2,
                        config_changes={"num_hidden_layers": L},
                    ),
                    depth,
                ),
                *tagged(
                    pretrained.marian_base(
                        train_steps=1, train_reps=2, gen_reps=2,
                        config_changes={"encoder_layers": L, "decoder_layers": L},
                    ),
                    depth,
                ),
                *pretrained.t5_base(train_steps=1, train_reps=2, gen_reps=2, layers=L),
                *pretrained.m2m100_418m(train_steps=1, train_reps=2, gen_reps=2, layers=L),
            ]
            if q
            else [
                *pretrained.bert_base(train_steps=2, train_reps=6, infer_batches=1, infer_reps=8),
                *pretrained.marian_base(train_steps=2, train_reps=6, gen_reps=4),
                *seq2seq_shapes(False),
            ]
        ),
        "decoding": lambda: generation.kv_cache(steps=30 if q else 60, reps=3 if q else 5),
        "precision": lambda: precision.training_and_decoding(
            "transformer_small" if q else "transformer_base",
            2048 if q else 4096,
            steps=4 if q else 8,
            reps=2 if q else 4,
            decode_batch=32 if q else 64,
            decode_tokens=16 if q else 32,
        ),
        "mfu": lambda: training.mfu(
            "transformer_big" if paper else "transformer_base", 2048 if q else 4096, steps=1 if q else 4
        ),
        # issue 27 item 6, on a CUDA GPU (elsewhere only the FLOPs per token): 32k-token batches fill an H100
        "gpu": lambda: training.gpu_mfu("transformer_base", 32768, steps=12 if q else 40, skip=4 if q else 10),
        # quick: the default run's peak only (transformer_base's costs a second process, ~20 s)
        "memory": lambda: training.memory(default_steps=10 if q else 200, base_steps=None if q else 3),
        "export": lambda: export.sizes(0.9),
        "heads": lambda: generation.heads(rounds=1 if q else 3),
        "analysis": lambda: [
            # quick: 30 steps (fewer leave a model whose beam decodes run long, and cost more)
            *analysis.components(train_steps=30 if q else 1200, reps=1 if q else 3, warmup=0 if q else 1),
            *analysis.attendout(reps=2 if q else 5),
        ],
        "oneshot": lambda: [
            # 512-token batches, as pruner=oneshot makes; quick: 2 of BERT-base's 12 layers
            *(
                tagged(oneshot.prune_encoder(n=64, seq=128, batch=4, reps=1, changes={"enc_layers": L}), depth)
                if q
                else oneshot.prune_encoder(n=128, seq=128, batch=4, reps=1)
            ),
            *oneshot.layer_solve(reps=2 if q else 3),
            # prunelab / the reference code (bench/reference_oneshot.py), one Llama-shaped model, same windows
            *oneshot.against_reference(
                {**oneshot.LLAMA_60M, "num_hidden_layers": L} if q else oneshot.LLAMA_60M,
                n=4 if q else 8,
                seq=512,
                reps=2 if q else 3,
            ),
        ],
        "sparse24": lambda: semi_structured.linear_and_encoder(
            batches=(1, 16, 256) if q else (1, 4, 16, 64, 256), reps=2 if q else 5
        ),
        "causal_lm": lambda: (
            tagged(
                decoder_lms(
                    {m: {"num_hidden_layers": L} for m in DECODER_LMS}, {"calls": 5, "reps": 3},
                    train_steps=1, train_reps=2, eval_batches=1, eval_reps=2, gen_reps=2,
                ),
                depth,
            )
            if q
            else decoder_lms(train_steps=2, train_reps=4, eval_batches=2, eval_reps=4, gen_reps=4)
        ),
    }  # fmt: skip


DECODER_LMS = {"Llama-100M": "llama_100m", "OPT-125M": "opt_125m", "Gemma-2-140M": "gemma2_140m"}  # causal_lm's


def decoder_lms(
    changes: dict[str, dict[str, Any]] | None = None, kernel_sizes: dict[str, int] | None = None, **sizes: Any
) -> list[Figure]:
    """The causal_lm section: one call of causal_lm.decoder_lm per model shape, all at the same sizes, each in a
    process of its own (`changes`: a model's label -> its config changes, the smoke run's tiny shapes), then
    causal_lm.kernels at `kernel_sizes` (its defaults: a Llama-100M batch's logits and hidden states). In one process,
    the models measured first changed the later ones' ratios: Gemma-2-140M's perplexity forward was 1.07 alone and
    0.98-1.00 after the Llama rows (both sides interleaved either way)."""
    c = changes or {}
    rows = [
        f for label, fn in DECODER_LMS.items() for f in in_child("causal_lm", fn, **sizes, config_changes=c.get(label))
    ]
    return rows + in_child("causal_lm", "kernels", **(kernel_sizes or {}))


# a tiny model on 400 training pairs, 8 valid and 8 test sentences decoded greedily, 4 tokens each
SMOKE = ["experiment=smoke", "data.valid_size=8", "data.test_size=8", "task.beam_size=1", "task.max_len_a=0"]
SMOKE += ["task.max_len_b=4"]
SMOKE_NMT = {"vocab_size": 500, "d_model": 32, "n_heads": 2, "d_ff": 64, "enc_layers": 1, "dec_layers": 1}
SMOKE_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
SMOKE_LLAMA = {"vocab_size": 500, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
SMOKE_LLAMA |= {"num_attention_heads": 4, "num_key_value_heads": 2}
SMOKE_OPT = {"vocab_size": 500, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
SMOKE_OPT |= {"word_embed_proj_dim": 32, "max_position_embeddings": 64}
SMOKE_GEMMA2 = {**SMOKE_LLAMA, "num_hidden_layers": 2, "head_dim": 16, "sliding_window": 8}
SMOKE_ONESHOT = {"vocab_size": 3000, "d_model": 32, "n_heads": 2, "d_ff": 64, "enc_layers": 2}
SMOKE_24 = {"vocab_size": 3000, "d_model": 64, "n_heads": 2, "d_ff": 128, "enc_layers": 1}
SMOKE_MARIAN = {
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
}

SMOKE_LLAMA_ONESHOT = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
)

SMOKE_SEQ2SEQ = {"train_steps": 1, "train_reps": 1, "gen_reps": 1, "train_batch": 2, "seq": 8, "gen_batch": 2}
SMOKE_SEQ2SEQ |= {"src_len": 8, "new_tokens": 3, "layers": 1}
SMOKE_T5 = {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 64}
SMOKE_M2M100 = {"d_model": 32, "encoder_attention_heads": 4, "decoder_attention_heads": 4}
SMOKE_M2M100 |= {"encoder_ffn_dim": 64, "decoder_ffn_dim": 64}


def smoke_plan(out: Path) -> dict[str, Callable[[], list[Figure]]]:
    """Every section of `plan` once, at its smallest setting (tiny models, 1 repetition, a few steps), so that
    a change that breaks a section shows in `make test`; the figures' values mean nothing at this size."""
    return {
        "training": lambda: training.framework_and_masks(steps=3, reps=1, overrides=SMOKE),
        "hf": lambda: [
            *training.hf_training("transformer_tiny", steps=3, reps=1, overrides=SMOKE),
            *generation.hf_generation("transformer_tiny", steps=3, reps=1, batch=4, overrides=SMOKE),
        ],
        "pretrained": lambda: [
            *pretrained.bert_base(
                train_steps=1,
                train_reps=1,
                infer_batches=1,
                infer_reps=1,
                train_batch=2,
                infer_batch=2,
                seq=16,
                config_changes=SMOKE_BERT,
            ),
            *pretrained.marian_base(
                train_steps=1,
                train_reps=1,
                gen_reps=1,
                train_batch=2,
                seq=8,
                gen_batch=2,
                src_len=8,
                new_tokens=3,
                config_changes=SMOKE_MARIAN,
            ),
            *pretrained.t5_base(**SMOKE_SEQ2SEQ, config_changes=SMOKE_T5),
            *pretrained.m2m100_418m(**SMOKE_SEQ2SEQ, config_changes=SMOKE_M2M100),
        ],
        "decoding": lambda: generation.kv_cache(steps=3, reps=1),
        "precision": lambda: precision.training_and_decoding(
            "transformer_tiny", 512, steps=3, reps=1, decode_batch=2, decode_tokens=3, overrides=SMOKE, matmul_n=64
        ),
        "mfu": lambda: training.mfu("transformer_tiny", 512, steps=1, overrides=SMOKE, matmul_n=64),
        "gpu": lambda: training.gpu_mfu("transformer_tiny", 512, steps=2, skip=1, overrides=SMOKE),
        "memory": lambda: training.memory(1, base_steps=None, overrides=SMOKE),  # one process: the default run
        "export": lambda: export.sizes(0.9, shape=SMOKE_NMT),
        "heads": lambda: generation.heads(rounds=1, steps=3, shape=SMOKE_NMT, batch_sizes=(1, 4)),
        "analysis": lambda: [
            *analysis.components(train_steps=2, reps=1, warmup=0, overrides=SMOKE, folder=out / ".run-smoke"),
            *analysis.attendout(reps=1, layers=3, d_model=32),
        ],
        "oneshot": lambda: [
            *oneshot.prune_encoder(n=8, seq=16, batch=4, changes=SMOKE_ONESHOT),
            *oneshot.layer_solve(rows=16, cols=64, tokens=128, reps=1),
            *oneshot.against_reference(SMOKE_LLAMA_ONESHOT, n=2, seq=16, reps=1),
        ],
        "sparse24": lambda: semi_structured.linear_and_encoder(batches=(1, 4), seq=16, reps=1, changes=SMOKE_24),
        "causal_lm": lambda: decoder_lms(
            {"Llama-100M": SMOKE_LLAMA, "OPT-125M": SMOKE_OPT, "Gemma-2-140M": SMOKE_GEMMA2},
            {"rows": 70, "vocab": 50, "width": 16, "calls": 1, "reps": 1},
            train_steps=1,
            train_reps=1,
            eval_batches=1,
            eval_reps=1,
            gen_reps=1,
            batch=2,
            seq=16,
            prompt=4,
            new_tokens=3,
        ),
    }


def expected_duration(mode: str, sections: list[str], folder: Path = HERE) -> str:
    """What the run should take, from the bench's recorded results (bench/results*.json) of the same mode: each
    section's `section_seconds`, or for an older file without them its whole `wall_s` when every section it ran is
    among those asked for: "expected ~12 min (...)", or which sections have no recorded time."""
    recorded: dict[str, float] = {}
    lumps: list[tuple[list[str], float]] = []  # (sections, seconds) of files without per-section times
    for f in sorted(folder.glob("results*.json")):
        try:
            res = json.loads(f.read_text())
        except ValueError:
            continue
        if not isinstance(res, dict) or res.get("mode") != mode:  # other tools' results files may hold lists
            continue
        if res.get("section_seconds"):
            recorded.update(res["section_seconds"])
        elif res.get("sections") and res.get("wall_s"):
            lumps.append((list(res["sections"]), float(res["wall_s"])))
    total = sum(recorded[s] for s in sections if s in recorded)
    known = {s for s in sections if s in recorded}
    for names, sec in lumps:
        if set(names) <= set(sections) and not set(names) & known:
            total += sec
            known |= set(names)
    unknown = [s for s in sections if s not in known]
    text = f"{mode} mode, {len(sections)} section(s): expected ~{total / 60:.1f} min from recorded runs" * bool(known)
    if unknown:
        text += ("; " if text else f"{mode} mode: ") + f"no recorded time for {', '.join(unknown)}"
    return text


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = f"{names[0]} x {len(names)}" if names else cpu
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "lightning", "hydra-core", "transformers", "sacrebleu"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "cpu": cpu,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        **versions,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 0.01 else f"{x:.3f}"


def row(f: Figure) -> str:
    """The figure as a line of the RESULTS.md table."""
    rng = f"[{fmt(f.lo)}, {fmt(f.hi)}] {f.spread_note}".rstrip() if f.lo is not None else ""
    goal = "" if f.goal is None else (f"< {fmt(f.goal)}" if f.lower_is_better else f">= {fmt(f.goal)}")
    unit = "" if f.unit in ("x", "") else f" {f.unit}"
    return f"| {f.section} | {f.name} | {fmt(f.value)}{unit} | {rng} | {goal} | {f.verdict} | {f.note} |"


def markdown(meta: dict, figures: list[Figure]) -> str:
    head = [
        "# prunelab benchmark results",
        "",
        f"Written by `{meta['command']}` on {meta['date']} ({meta['mode']} mode, {meta['wall_s'] / 60:.1f} min).",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in meta["machine"].items()),
        "",
        "Ratios are medians of per-repetition ratios with [min, max] and how far that range reaches from the median "
        "(±%, called out past ±5%); the contenders of each ratio are interleaved in one process after a warm-up.",
        "",
        "| section | figure | value | [min, max] | goal | verdict | how |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [row(f) for f in figures]
    gpu = [
        "",
        "**GPU:** "
        + (
            "the figures above were taken with a GPU present; see the machine table."
            if torch.cuda.is_available()
            else "no GPU figures exist yet: no GPU has been lent to this benchmark (the GPU path is "
            "`python train.py hardware=gpu`, bf16-mixed; `--sections gpu` measures its training MFU)."
        ),
        "",
    ]
    return "\n".join(head + rows + gpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions (under 5 minutes)")
    parser.add_argument("--paper", action="store_true", help="transformer_base vs MarianMT, transformer_big MFU")
    parser.add_argument(
        "--smoke", action="store_true", help="every section once at its smallest setting (checks, not figures)"
    )
    parser.add_argument("--sections", default="", help="comma-separated subset of the sections (default: all)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for results.json and RESULTS.md (default: bench/; with --smoke a temporary one)",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else HERE
    sections = smoke_plan(args.out) if args.smoke else plan(args.quick, args.paper)
    chosen = [s for s in args.sections.split(",") if s] or list(sections)
    unknown = sorted(set(chosen) - set(sections))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(sections)}")
    os.environ.setdefault("WANDB_SILENT", "true")
    mode = "smoke" if args.smoke else "quick" if args.quick else "paper" if args.paper else "full"
    print(f"[bench] {expected_duration(mode, chosen)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    figures: list[Figure] = []
    by_section: dict[str, int] = {}
    section_s: dict[str, float] = {}
    for name in chosen:
        t = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        new = sections[name]()
        figures += new
        by_section[name] = len(new)
        section_s[name] = round(time.perf_counter() - t, 1)
        for f in new:
            rng = f" [{fmt(f.lo)}, {fmt(f.hi)}] {f.spread_note}".rstrip() if f.lo is not None else ""
            print(f"[bench]   {f.name}: {fmt(f.value)}{rng} {f.verdict}", file=sys.stderr, flush=True)
        print(f"[bench] {name} done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    meta = {
        "command": " ".join(["python bench/run.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": mode,
        "sections": chosen,
        "figures_by_section": by_section,
        "section_seconds": section_s,
        "wall_s": time.perf_counter() - start,
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({**meta, "figures": [f.as_dict() for f in figures]}, indent=2) + "\n"
    )
    (args.out / "RESULTS.md").write_text(markdown(meta, figures))
    print(markdown(meta, figures))
    print(f"written: {args.out / 'results.json'}, {args.out / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
