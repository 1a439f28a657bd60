"""Decoder-only language models of published shapes with random weights, built by transformers and imported by
prunelab (prunelab.hf.families.load_hf, the family from config.json): the perplexity forward pass (the protocol's
windows, no_grad), training throughput (forward + backward + AdamW on the same batches) and greedy generation with a
KV cache, each prunelab / the transformers class. `decoder_lm` measures one shape; each model is one call of it:

- `llama_100m`: a Llama-shaped model of about 100M parameters (12 layers of width 768, 12 query and 4 K/V heads,
  SwiGLU 2048, vocabulary 32,000, tied embeddings);
- `opt_125m`: OPT-125M's own shape (12 layers of width 768, 12 heads, ReLU 3072, learned positions, pre-norm,
  vocabulary 50,272, tied embeddings)."""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from harness import Figure, interleave, paired
from pretrained import Progress, adamw, compare_training, inference_rate, parameters, save_and_import
from torch import Tensor

SECTION = "causal_lm"
Batch = dict[str, Tensor]
LLAMA_100M = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
# facebook/opt-125m's config.json (its other fields are OPTConfig's defaults)
OPT_125M = dict(
    vocab_size=50272,
    hidden_size=768,
    ffn_dim=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=2048,
    word_embed_proj_dim=768,
    do_layer_norm_before=True,
)

# Gemma 2's layer (head_dim 256 wider than hidden / heads, sandwich norms, soft-capped attention and logits, sliding
# windows in every other layer, GeGLU, sqrt(hidden) embedding scale) at ~140M parameters instead of 2.6B: 12 layers
# of width 768, 4 query heads of 256 in 2 K/V groups, GeGLU 3072, vocabulary 32,000; a window of 128 positions, under
# the bench's 256-token windows, so that the sliding layers' masks are exercised (Gemma-2-2B's is 4,096)
GEMMA2_140M = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=256,
    max_position_embeddings=2048,
    sliding_window=128,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    query_pre_attn_scalar=256,
)


def windows(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[Batch]:
    """`n` batches of `batch` random windows of `seq` tokens: src = window[:-1], target = window[1:]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        w = torch.randint(0, vocab, (batch, seq), generator=g)
        out.append({"window": w, "src": w[:, :-1], "target": w[:, 1:]})
    return out


def decoder_lm(
    label: str,
    config_class: type,
    model_class: type,
    shape: dict[str, Any],
    train_steps: int,
    train_reps: int,
    eval_batches: int,
    eval_reps: int,
    gen_reps: int,
    batch: int = 4,
    seq: int = 256,
    gen_batch: int = 1,
    prompt: int = 32,
    new_tokens: int = 32,
    config_changes: dict[str, Any] | None = None,
) -> list[Figure]:
    """The three rows of one model: `config_class(**shape, **config_changes)` built by `model_class` with random
    weights (seed 0), saved, and imported by prunelab.hf.families.load_hf; the figures are named after `label` and
    `model_class`. `config_changes` shrinks the shape for the smoke run."""
    from prunelab.hf.families import load_hf
    from prunelab.models.lm_generation import generate_lm

    done = Progress()
    torch.manual_seed(0)
    config = config_class(**{**shape, **(config_changes or {})})
    hf = model_class(config).eval()
    ours = save_and_import(hf, load_hf).eval()
    size = sum(p.numel() for p in ours.parameters())
    done(f"{label} ({size / 1e6:.0f}M parameters) built, saved and imported")
    theirs = model_class.__name__
    V = config.vocab_size
    threads, attn = torch.get_num_threads(), hf.config._attn_implementation
    out: list[Figure] = []

    # the perplexity forward pass: mean NLL of every window's predicted tokens, as the task's evaluation computes it
    data = windows(eval_batches, batch, seq, V, seed=1)
    with torch.no_grad():
        probe = data[0]["window"][:1]
        diff = float((ours(probe[:, :-1]) - hf(probe[:, :-1]).logits).abs().max())

    def ours_nll(b: Batch) -> Tensor:
        return ours.token_nll(b).mean()

    def hf_nll(b: Batch) -> Tensor:
        return hf(input_ids=b["window"], labels=b["window"]).loss

    n = sum(b["target"].numel() for b in data)
    inference_rate(ours_nll, data[:1], 1)  # warm-up
    inference_rate(hf_nll, data[:1], 1)
    r = interleave(
        {"prunelab": lambda: inference_rate(ours_nll, data, n), "hf": lambda: inference_rate(hf_nll, data, n)},
        eval_reps,
        warmup=0,
    )
    out.append(
        paired(
            SECTION,
            f"{label} perplexity forward tok/s: prunelab / {theirs}",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"eval, no_grad, loss over every predicted token; {eval_batches} batch(es) of {batch} x {seq} per rep, "
                f"{eval_reps} reps after a warm-up batch; median {median(r['prunelab']):,.0f} vs "
                f"{median(r['hf']):,.0f} tok/s; {size / 1e6:.0f}M parameters; HF attention {attn}, fp32, {threads} "
                f"threads; max |logit diff| {diff:.1e}"
            ),
        )
    )
    done("perplexity forward")

    # training: the same batches, each side's own loss, AdamW
    ours.train()
    hf.train()
    train = windows(train_steps + 1, batch, seq, V, seed=2)

    def ours_loss(b: Batch) -> Tensor:
        return ours.token_nll(b).mean()

    r, _, _ = compare_training(
        (ours_loss, adamw(ours)), (hf_nll, adamw(hf)), train, lambda b: b["target"].numel(), train_reps
    )
    out.append(
        paired(
            SECTION,
            f"{label} training tok/s: prunelab / {theirs}",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"forward + backward + AdamW; {train_steps} steps of {batch} x {seq} per rep, {train_reps} reps after "
                f"a warm-up step; median {median(r['prunelab']):,.0f} vs {median(r['hf']):,.0f} tok/s; "
                f"{parameters(ours, hf)}"
            ),
        )
    )
    done("training")

    # greedy generation with a KV cache: `new_tokens` tokens after a `prompt`-token prompt, no early stop. Where the
    # model has dropout (OPT: 0.1) the two sides drew different masks in training, so their weights now differ:
    # prunelab decodes with transformers' trained weights, imported again, so that both decode the same model
    hf.eval()
    ours = save_and_import(hf, load_hf).eval()
    prompts = torch.randint(0, V, (gen_batch, prompt), generator=torch.Generator().manual_seed(3))
    # an explicit all-ones mask: without one, generate masks every prompt token equal to pad_token_id (and OPT's
    # positions follow the mask), so a random prompt containing that token would decode differently
    mask = torch.ones_like(prompts)

    def hf_generate() -> Tensor:
        with torch.no_grad():
            return hf.generate(
                prompts,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=0,
            )

    want = hf_generate()[:, prompt:]
    got = generate_lm(ours, prompts, new_tokens)
    same = sum(a == b for a, b in zip(got, want.tolist(), strict=True))

    def ours_gen() -> float:
        start = time.perf_counter()
        generate_lm(ours, prompts, new_tokens)
        return gen_batch * new_tokens / (time.perf_counter() - start)

    def hf_gen() -> float:
        start = time.perf_counter()
        hf_generate()
        return gen_batch * new_tokens / (time.perf_counter() - start)

    r = interleave({"prunelab": ours_gen, "hf": hf_gen}, gen_reps, warmup=1)
    out.append(
        paired(
            SECTION,
            f"{label} greedy generation tok/s: prunelab / {theirs}.generate",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"KV cache, batch {gen_batch}, {prompt}-token prompt, {new_tokens} new tokens, {gen_reps} reps after a "
                f"warm-up; median {median(r['prunelab']):,.1f} vs {median(r['hf']):,.1f} tok/s; "
                f"{same}/{gen_batch} sequences token-for-token equal to generate"
            ),
        )
    )
    done("generation")
    return out


def llama_100m(**sizes: Any) -> list[Figure]:
    """The Llama-shaped rows (sizes: decoder_lm's from train_steps on)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return decoder_lm("Llama-100M", LlamaConfig, LlamaForCausalLM, LLAMA_100M, **sizes)


def opt_125m(**sizes: Any) -> list[Figure]:
    """The OPT-125M-shaped rows (sizes: decoder_lm's from train_steps on)."""
    from transformers import OPTConfig, OPTForCausalLM

    return decoder_lm("OPT-125M", OPTConfig, OPTForCausalLM, OPT_125M, **sizes)


def gemma2_140m(**sizes: Any) -> list[Figure]:
    """The Gemma-2-shaped rows (sizes: decoder_lm's from train_steps on)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return decoder_lm("Gemma-2-140M", Gemma2Config, Gemma2ForCausalLM, GEMMA2_140M, **sizes)


def kernels(rows: int = 4 * 255, vocab: int = 32000, width: int = 768, calls: int = 10, reps: int = 5) -> list[Figure]:
    """What prunelab.models.kernels saves outside the matmuls, each against the torch ops it replaces (same values):
    the next-token loss of `rows` x `vocab` fp32 logits without and with gradients, and fp32 RMSNorm's forward and
    backward over `rows` x `width`. Each call makes its input fresh (as a model's head or layer does); the time of
    `calls` calls (RMSNorm's: ten times as many), `reps` interleaved repetitions after a warm-up -> three ratios, the
    torch ops' time / prunelab's."""
    from prunelab.models.kernels import rms_norm, token_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(rows, vocab, generator=g)
    target = torch.randint(0, vocab, (rows,), generator=g)
    target[:: max(rows // 16, 1)] = -100  # some ignored rows, as padding and strided context give
    x = torch.randn(rows, width, generator=g)
    w = (1 + 0.1 * torch.randn(width, generator=g)).requires_grad_()
    upstream = torch.randn(rows, width, generator=g)

    def torch_loss(z: Tensor) -> Tensor:
        return F.cross_entropy(z, target, ignore_index=-100, reduction="none")

    def ours_loss(z: Tensor) -> Tensor:
        return token_cross_entropy(z, target, -100)

    def torch_norm(z: Tensor) -> Tensor:
        return z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # the RMSNorm module's formula

    def ours_norm(z: Tensor) -> Tensor:
        return rms_norm(z, w, 1e-6)

    def no_grad(loss: Callable[[Tensor], Tensor]) -> Callable[[], float]:
        def run() -> float:
            with torch.no_grad():
                t = time.perf_counter()
                for _ in range(calls):
                    loss(logits * 1.0)
                return time.perf_counter() - t

        return run

    def backward(fn: Callable[[Tensor], Tensor], source: Tensor, grad: Tensor | None, n: int) -> Callable[[], float]:
        def run() -> float:
            t = time.perf_counter()
            for _ in range(n):
                z = (source * 1.0).requires_grad_()
                y = fn(z)
                y.backward(grad if grad is not None else torch.ones_like(y) / y.numel())
            return time.perf_counter() - t

        return run

    with torch.no_grad():
        same_loss = torch.equal(ours_loss(logits), torch_loss(logits))
        same_norm = torch.equal(ours_norm(x), torch_norm(x))
    shape = f"{rows} x {vocab:,} fp32 logits"
    out = []
    for name, theirs, ours, note, n in (
        (f"next-token loss without gradients, {shape}", no_grad(torch_loss), no_grad(ours_loss), same_loss, calls),
        (
            f"next-token loss forward + backward, {shape}",
            backward(torch_loss, logits, None, calls),
            backward(ours_loss, logits, None, calls),
            same_loss,
            calls,
        ),
        (
            f"RMSNorm forward + backward, {rows} x {width} fp32",
            backward(torch_norm, x, upstream, 10 * calls),  # milliseconds a call: ten times the calls
            backward(ours_norm, x, upstream, 10 * calls),
            same_norm,
            10 * calls,
        ),
    ):
        r = interleave({"torch": theirs, "prunelab": ours}, reps, warmup=1)
        out.append(
            paired(
                SECTION,
                f"{name}: torch ops / prunelab.models.kernels time",
                r["torch"],
                r["prunelab"],
                goal=1.0,
                note=(
                    f"{n} calls per rep, each on a fresh input, {reps} interleaved reps after a warm-up; median "
                    f"{median(r['torch']) / n * 1e3:.2f} vs {median(r['prunelab']) / n * 1e3:.2f} ms a call; "
                    f"outputs torch.equal: {note}"
                ),
            )
        )
    return out
