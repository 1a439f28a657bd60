"""Text generation for a decoder-only language model (prunelab.models.causal_lm.CausalLM), with its key/value cache:
greedy decoding and sampling, as transformers' `generate` does them.

    greedy     the argmax of every step's logits (fp32), as `generate(do_sample=False)`
    sampling   the logits (fp32) divided by `temperature`, then cut to the `top_k` best (ties at the k-th kept),
               then to the nucleus of mass `top_p` (the fewest best tokens whose probabilities sum to at least
               top_p, at least one), then one multinomial draw from their softmax: transformers' Temperature-,
               TopK- and TopPLogitsWarper in that order. Unlike transformers, whose default generation config sets
               top_k=50, no top-k cut is made unless asked for.

A row stops at its end-of-sequence token (kept in its output, as transformers returns it), after `max_new_tokens`
tokens, when `stop` says so, or when it reaches the model's last position (max_len).

Prompts of different lengths share one batch without padding: the model has no key mask, so every row is left
aligned and all rows sit at the same position. The common prefix (the shortest prompt's length) goes into the
empty cache at once; from there on, one position a step, a row still inside its prompt is fed its next prompt
token (the logits it had are not used) while the others are fed what they generated. Finished rows leave the
batch (and the cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from prunelab.models.causal_lm import CausalLM

EosIds = int | Sequence[int] | None


def warp_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Next-token logits (B, V) -> the fp32 scores sampling draws from (softmax of them), filtered tokens at -inf:
    divided by temperature, then top-k, then top-p, as transformers' logits warpers (min_tokens_to_keep=1)."""
    _check_sampling(temperature, top_k, top_p)
    scores = logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:  # None or 0: no cut (transformers skips top_k=0)
        k = min(top_k, scores.size(-1))
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p)  # the low tail whose mass is at most 1 - top_p
        drop[..., -1:] = False  # the best token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None: no cut), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def next_tokens(
    logits: Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """logits (B, V) -> the chosen tokens (B,): the argmax, or one draw from softmax(warp_logits(...))."""
    if not do_sample:
        return logits.float().argmax(dim=-1)
    probs = warp_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def _eos_set(eos_id: EosIds) -> set[int]:
    if eos_id is None:
        return set()
    if isinstance(eos_id, int):
        return {eos_id}
    return {int(i) for i in eos_id}


def _prompt_lists(prompts: Sequence[Sequence[int]] | Tensor) -> list[list[int]]:
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"a prompt tensor must be (B, T), got shape {tuple(prompts.shape)}")
        return [list(map(int, row)) for row in prompts.tolist()]
    return [[int(t) for t in p] for p in prompts]


@torch.inference_mode()
def generate_lm(
    model: CausalLM,
    prompts: Sequence[Sequence[int]] | Tensor,
    max_new_tokens: int,
    eos_id: EosIds = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """The new tokens of each prompt (a list of ids, or rows of a (B, T) tensor; each at least one token), in the
    prompts' order: at most `max_new_tokens`, ending with an end-of-sequence id (`eos_id`: one id or several) when
    one was generated. `do_sample`: draw each token (temperature, top_k, top_p, `generator`: see the module's
    docstring; the global RNG when no generator is given) instead of the argmax. `stop`: called with a row's new
    tokens after each one; True ends the row there (e.g. a stop string appeared). Runs in eval mode (the model's
    mode is restored after), without gradients."""
    rows = _prompt_lists(prompts)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample:
        _check_sampling(temperature, top_k, top_p)
    out: list[list[int]] = [[] for _ in rows]
    if not rows or max_new_tokens == 0:
        return out
    lens = [len(r) for r in rows]
    max_len = model.max_positions
    if min(lens) == 0:
        raise ValueError("every prompt needs at least one token (e.g. a beginning-of-sequence id)")
    if max(lens) > max_len:
        raise ValueError(f"a prompt of {max(lens)} tokens exceeds the model's max_len={max_len}")
    eos = _eos_set(eos_id)
    device = model.embed.weight.device
    longest = max(lens)
    prompt = torch.tensor([r + [0] * (longest - len(r)) for r in rows], dtype=torch.long, device=device)
    prompt_len = torch.tensor(lens, device=device)
    active = torch.arange(len(rows), device=device)  # the rows still in the batch, as indices into `rows`
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        pos = min(lens)  # the position the current logits predict
        logits = model.logits(model.hidden(prompt[:, :pos], cache, 0)[:, -1])  # (B, V): the last position only
        while True:
            chosen = next_tokens(logits, do_sample, temperature, top_k, top_p, generator)  # (A,)
            in_prompt = prompt_len[active] > pos
            tokens = torch.where(in_prompt, prompt[active, min(pos, longest - 1)], chosen)
            keep: list[int] = []
            for j, (i, token, forced) in enumerate(
                zip(active.tolist(), tokens.tolist(), in_prompt.tolist(), strict=True)
            ):
                if not forced:
                    out[i].append(token)
                    if token in eos or len(out[i]) >= max_new_tokens or (stop is not None and stop(out[i])):
                        continue
                keep.append(j)
            if not keep or pos >= max_len:  # nothing left, or no position to feed the new tokens at
                return out
            if len(keep) < len(tokens):
                idx = torch.tensor(keep, device=device)
                model.reorder_cache(cache, idx)
                active, tokens = active[idx], tokens[idx]
            logits = model.decode_step(tokens, cache, pos)
            pos += 1
    finally:
        model.train(was_training)
