"""A Llama-shaped language model of about 100M parameters with random weights (12 layers of width 768, 12 query and 4
K/V heads, SwiGLU 2048, vocabulary 32,000, tied embeddings), built by transformers and imported by prunelab: the
perplexity forward pass (the protocol's windows, no_grad), training throughput (forward + backward + AdamW on the
same batches) and greedy generation with a KV cache, each prunelab / LlamaForCausalLM."""

from __future__ import annotations

import time
from statistics import median
from typing import Any

import torch
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


def windows(n: int, batch: int, seq: int, vocab: int, seed: int) -> list[Batch]:
    """`n` batches of `batch` random windows of `seq` tokens: src = window[:-1], target = window[1:]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        w = torch.randint(0, vocab, (batch, seq), generator=g)
        out.append({"window": w, "src": w[:, :-1], "target": w[:, 1:]})
    return out


def llama_100m(
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
    from transformers import LlamaConfig, LlamaForCausalLM

    from prunelab.hf.causal_lm import load_hf_causal_lm
    from prunelab.models.lm_generation import generate_lm

    done = Progress()
    torch.manual_seed(0)
    config = LlamaConfig(**{**LLAMA_100M, **(config_changes or {})})
    hf = LlamaForCausalLM(config).eval()
    ours = save_and_import(hf, load_hf_causal_lm).eval()
    size = sum(p.numel() for p in ours.parameters())
    done(f"Llama ({size / 1e6:.0f}M parameters) built, saved and imported")
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
            "Llama-100M perplexity forward tok/s: prunelab / LlamaForCausalLM",
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
            "Llama-100M training tok/s: prunelab / LlamaForCausalLM",
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

    # greedy generation with a KV cache: `new_tokens` tokens after a `prompt`-token prompt, no early stop
    ours.eval()
    hf.eval()
    prompts = torch.randint(0, V, (gen_batch, prompt), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = hf.generate(
            prompts, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0
        )[:, prompt:]
    got = generate_lm(ours, prompts, new_tokens)
    same = sum(a == b for a, b in zip(got, want.tolist(), strict=True))

    def ours_gen() -> float:
        start = time.perf_counter()
        generate_lm(ours, prompts, new_tokens)
        return gen_batch * new_tokens / (time.perf_counter() - start)

    def hf_gen() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            hf.generate(prompts, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        return gen_batch * new_tokens / (time.perf_counter() - start)

    r = interleave({"prunelab": ours_gen, "hf": hf_gen}, gen_reps, warmup=1)
    out.append(
        paired(
            SECTION,
            "Llama-100M greedy generation tok/s: prunelab / LlamaForCausalLM.generate",
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
