"""`make bench`: what masks cost in the training hot path, and what the decoder's cache buys.

Every figure is a ratio of two timings taken in this one run on this machine, so it carries over between
machines better than seconds do. Prints a table and writes bench/results.json.
"""

from __future__ import annotations

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
from prunelab.models.decoding import greedy_decode
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


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        **bench_masking(rounds=7, reps=4),
        **bench_decoding(reps=3),
    }
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    for k, v in results.items():
        print(f"{k:32s} {v:.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    print(f"written: {OUT}")


if __name__ == "__main__":
    main()
