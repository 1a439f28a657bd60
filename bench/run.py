"""`make bench`: what masks cost in the training hot path, what the decoder's cache buys, what removing
half of the attention heads buys at inference, what the component analysis costs in full decodes, and
what AttendOut's constant attention maps buy (`--sections` picks some).

Every figure is a ratio of two timings taken in this one run on this machine, so it carries over between
machines better than seconds do. Prints a table and writes bench/results.json.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import attention_names, set_gate
from prunelab.models.decoding import greedy_decode
from prunelab.models.surgery import prune_heads
from prunelab.pruning import MagnitudePruner
from prunelab.pruning.masks import prunable_weights

OUT = Path(__file__).with_name("results.json")


def make_model() -> Transformer:
    torch.manual_seed(0)
    return build_transformer(vocab_size=1500, d_model=128, n_heads=4, d_ff=512, enc_layers=2, dec_layers=2, dropout=0.0)


def make_batch(B: int = 128, S: int = 14) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randint(4, 1500, (B, S), generator=g),
        torch.randint(4, 1500, (B, S), generator=g),
        torch.randint(4, 1500, (B, S), generator=g),
    )


def time_it(fn: Callable[[], None], reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def train_step_fn(model: Transformer, after_step: Callable[[], None], before_step: Callable[[], None]):
    src, tgt_in, tgt_out = make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        before_step()
        opt.step()
        after_step()

    return step


def bench_masking(rounds: int, reps: int) -> dict[str, float]:
    """Dense vs masks applied in place (prunelab) vs torch.nn.utils.prune's forward pre-hook (recomputes
    w * mask on every forward). The three are timed in interleaved rounds; medians are compared."""
    dense = make_model().train()

    masked = make_model().train()
    pruner = MagnitudePruner(sparsity=0.9)
    pruner.attach(masked)
    pruner.prune_by_magnitude(0.9)

    hooked = make_model().train()
    for name in prunable_weights(hooked):
        module = hooked.get_submodule(name.rsplit(".", 1)[0])
        prune.l1_unstructured(module, "weight", amount=0.9)

    steps = {
        "dense": train_step_fn(dense, lambda: None, lambda: None),
        "in_place": train_step_fn(masked, pruner.apply_masks, pruner.mask_gradients),
        "hook": train_step_fn(hooked, lambda: None, lambda: None),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            times[k].append(time_it(fn, reps, warmup=1))
    med = {k: statistics.median(v) for k, v in times.items()}
    mask_ops = time_it(lambda: (pruner.mask_gradients(), pruner.apply_masks()), 50)
    return {
        "train_step_dense_ms": 1e3 * med["dense"],
        "masked_in_place_over_dense": med["in_place"] / med["dense"],
        "forward_hook_over_dense": med["hook"] / med["dense"],
        "mask_ops_share_of_dense_step": mask_ops / med["dense"],
    }


@torch.no_grad()
def bench_decoding(reps: int) -> dict[str, float]:
    model = make_model().eval()
    src = make_batch(B=64, S=20)[0]

    def no_cache() -> None:  # recompute the whole prefix at every step (what the cache avoids)
        mem, mask = model.encode(src)
        tgt = torch.ones(src.size(0), 1, dtype=torch.long)
        for _ in range(30):
            nxt = model.decode(tgt, mem, mask)[:, -1].argmax(-1, keepdim=True)
            tgt = torch.cat([tgt, nxt], 1)

    def cached() -> None:
        greedy_decode(model, src, bos_id=1, eos_id=-1, max_len_a=0.0, max_len_b=30)  # eos never hit: 30 steps

    t_full, t_cache = time_it(no_cache, reps, 1), time_it(cached, reps, 1)
    return {"greedy_30_steps_cached_ms": 1e3 * t_cache, "no_cache_over_cached": t_full / t_cache}


@torch.no_grad()
def bench_heads(rounds: int = 3, steps: int = 20) -> dict[str, float]:
    """Michel et al. (2019) Table 4: inference examples/s with half of every layer's heads removed, vs dense,
    transformer_base dimensions, greedy decoding of `steps` tokens; ratios of interleaved medians."""
    torch.manual_seed(0)
    dense = build_transformer(
        vocab_size=8000, d_model=512, n_heads=8, d_ff=2048, enc_layers=6, dec_layers=6, dropout=0.0
    ).eval()
    half = {n: list(range(0, dense.cfg.n_heads, 2)) for n in attention_names(dense)}
    pruned = copy.deepcopy(dense)
    prune_heads(pruned, half)
    masked = copy.deepcopy(dense)
    for name, heads in half.items():
        for h in heads:
            set_gate(masked, f"{name}.h{h}", 0.0)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 8000, (8, 20), generator=g)
    tgt = torch.randint(4, 8000, (8, 12), generator=g)
    out: dict[str, float] = {
        "heads_removed_max_abs_diff_vs_masked": float((pruned(src, tgt) - masked(src, tgt)).abs().max())
    }
    for B in (1, 4, 16, 64):
        src = torch.randint(4, 8000, (B, 20), generator=g)

        def run(m: Transformer, src: torch.Tensor = src) -> None:
            greedy_decode(m, src, bos_id=1, eos_id=-1, max_len_a=0.0, max_len_b=steps)  # exactly `steps` tokens

        times: dict[str, list[float]] = {"dense": [], "pruned": []}
        for _ in range(rounds):
            times["dense"].append(time_it(lambda: run(dense), 1, warmup=1))
            times["pruned"].append(time_it(lambda: run(pruned), 1, warmup=0))
        d, p = statistics.median(times["dense"]), statistics.median(times["pruned"])
        out[f"heads50_batch{B}_dense_examples_per_s"] = B / d
        out[f"heads50_batch{B}_speedup"] = d / p
    return out


def trained_run() -> Path:
    """A default-config run to analyse: bench/.run (trained once, 600 steps, then reused)."""
    import subprocess
    import sys

    run = Path(__file__).with_name(".run")
    if not (run / "results.json").exists() or json.loads((run / "results.json").read_text())["status"] != "completed":
        cmd = [sys.executable, "train.py", "trainer.max_steps=600", "logger=none", f"hydra.run.dir={run}"]
        subprocess.run(cmd, cwd=Path(__file__).parents[1], check=True, capture_output=True)
    return run


def bench_components(reps: int = 3) -> dict[str, float]:
    """Wang & Tu contribution analysis of every component vs (N+1) full decodes of the validation set
    (the unit the issue states the cost in), on a trained default-config model, at the run's beam."""
    from prunelab.cli.components import decode_settings
    from prunelab.cli.heads import load_run
    from prunelab.importance.ablation import corpus_bleu
    from prunelab.importance.components import ablation_bleu, components_off
    from prunelab.models.addressing import component_names

    res, dm, model = load_run(trained_run())
    tok, batches = dm.tokenizer, list(dm.val_dataloader())
    settings = decode_settings(res["config"], None)
    names = component_names(model)
    full, analysis, separate = [], [], []
    for _ in range(reps):  # interleaved, so drifts in machine speed hit all three alike
        t = time.perf_counter()
        corpus_bleu(model, batches, tok, settings.beam_size, settings)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = ablation_bleu(model, batches, tok, settings, names)
        analysis.append(time.perf_counter() - t)
        t = time.perf_counter()
        for n in names:
            with components_off(model, [n]):
                corpus_bleu(model, batches, tok, settings.beam_size, settings)
        separate.append(time.perf_counter() - t + full[-1])
    unit = (len(names) + 1) * statistics.median(full)
    return {
        "components: N (components)": float(len(names)),
        "components: beam": float(settings.beam_size),
        "components: analysis / (N+1) full decodes": statistics.median(analysis) / unit,
        "components: separate decodes / (N+1) full decodes": statistics.median(separate) / unit,
        "components: stopped early": float(len(r.stopped)),
    }


def bench_attendout(rounds: int = 5) -> dict[str, float]:
    """AttendOut's structural pruning: inference examples/s of a 12-layer classifier with 10 of its 12
    attention maps made constant (no Q/K, no scores) vs the unpruned model, batch 32 x 64 tokens."""
    from prunelab.models import build_classifier
    from prunelab.models.surgery import make_uniform

    torch.manual_seed(0)
    dense = build_classifier(
        num_classes=3, vocab_size=8000, d_model=256, n_heads=4, d_ff=1024, enc_layers=12, dropout=0.0
    ).eval()
    pruned = copy.deepcopy(dense)
    make_uniform(pruned, [f"enc.{i}.sa" for i in range(10)])
    src = torch.randint(4, 8000, (32, 64), generator=torch.Generator().manual_seed(0))
    src[:, 0] = 1
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    with torch.no_grad():
        for _ in range(rounds):
            times["dense"].append(time_it(lambda: dense(src), 3, warmup=1))
            times["pruned"].append(time_it(lambda: pruned(src), 3, warmup=1))
    d, p = statistics.median(times["dense"]), statistics.median(times["pruned"])
    return {"attendout10of12_dense_examples_per_s": 32 / d, "attendout10of12_speedup": d / p}


SECTIONS = {
    "masking": lambda: bench_masking(rounds=7, reps=4),
    "decoding": lambda: bench_decoding(reps=3),
    "heads": bench_heads,
    "components": bench_components,
    "attendout": bench_attendout,
}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    args = parser.parse_args()
    results: dict[str, float | str] = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
    }
    for name in args.sections.split(","):
        results.update(SECTIONS[name]())
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    for k, v in results.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
