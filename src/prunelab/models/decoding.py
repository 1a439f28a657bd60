"""Greedy and beam-search decoding with the incremental key/value cache. `hf_beam_search` is Hugging Face's beam
search, for parity with imported checkpoints (prunelab.hf.marian)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prunelab.models.transformer import Transformer


def max_target_lens(src: Tensor, pad_id: int, a: float, b: int, limit: int) -> Tensor:
    """Per sentence: at most a * source_length + b tokens (EOS included), never past the model's positions."""
    src_len = (src != pad_id).sum(1).float()  # (B,)
    return (a * src_len + b).long().clamp(1, limit)


def start_id(model: Transformer, bos_id: int) -> int:
    """The decoder's first input: the model's own start token when its config names one (Marian starts from its
    pad id, HF's decoder_start_token_id), else the caller's BOS."""
    start = getattr(model.cfg, "decoder_start_id", None)  # getattr: stand-in models with a minimal config
    return bos_id if start is None else start


def ban_pad(scores: Tensor, model: Transformer) -> None:
    """With cfg.ban_pad, pad can never be emitted (in place): HF's bad_words_ids=[[pad]], which Marian sets."""
    if getattr(model.cfg, "ban_pad", False):
        scores[:, model.cfg.pad_id] = float("-inf")


def force_eos(logits: Tensor, at_limit: Tensor, eos_id: int) -> None:
    """Rows that reached their length limit may only emit EOS (in place)."""
    if bool(at_limit.any()):
        eos = logits[at_limit, eos_id].clone()
        logits[at_limit] = float("-inf")
        logits[at_limit, eos_id] = eos


@torch.no_grad()
def greedy_decode(
    model: Transformer, src: Tensor, bos_id: int, eos_id: int, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """Argmax at every step. Returns token ids per sentence, without BOS and EOS. The first input is
    `start_id(model, bos_id)`."""
    pad = model.cfg.pad_id
    B = src.size(0)
    mem, mem_mask = model.encode(src)
    cache = model.new_cache()
    token = torch.full((B,), start_id(model, bos_id), dtype=torch.long, device=src.device)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    limits = max_target_lens(src, pad, max_len_a, max_len_b, model.max_positions)  # (B,)
    out: list[Tensor] = []
    for step in range(int(limits.max())):
        logits = model.decode_step(token, mem, mem_mask, cache, step)  # (B, V)
        ban_pad(logits, model)
        force_eos(logits, limits == step + 1, eos_id)
        token = logits.argmax(-1).masked_fill(done, pad)
        out.append(token)
        done |= token == eos_id
        if bool(done.all()):
            break
    return _strip(torch.stack(out, 1).tolist(), eos_id, pad)


def length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha; alpha = 0 turns it off."""
    return ((5.0 + length) / 6.0) ** alpha


def settled(scores: Tensor, lengths: Tensor, done: Tensor, limits: Tensor, alpha: float) -> Tensor:
    """Sentences whose result can no longer change, (b,), although some beams are still open: no open beam
    can end with a better normalised score than the best finished hypothesis f, since scores only fall and
    the best an open beam can reach is its score now over the length penalty of the longest length it may
    reach. (For alpha >= 0 that also puts every open score below f's raw score, so no continuation can
    push f out of the top K: f stays in the beam and wins.)"""
    b, K = scores.shape
    flat = scores.reshape(-1)
    norm = torch.where(done, flat / length_penalty(lengths, alpha), float("-inf")).view(b, K)
    best_norm = norm.max(1).values
    open_best = torch.where(done, float("-inf"), flat / length_penalty(limits.float(), alpha)).view(b, K).max(1).values
    return (best_norm > float("-inf")) & (open_best < best_norm)


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
) -> list[list[int]]:
    """Batched beam search. Finished hypotheses keep their score and stay in the beam (emitting pad);
    the winner per sentence is chosen by score / length_penalty. beam_size=1 is exactly greedy."""
    mem, mem_mask = model.encode(src)
    limits = max_target_lens(src, model.cfg.pad_id, max_len_a, max_len_b, model.max_positions)
    return beam_search_memory(model, mem, mem_mask, limits, bos_id, eos_id, beam_size, alpha)


@torch.no_grad()
def beam_search_memory(
    model: Transformer,
    mem: Tensor,
    mem_mask: Tensor,
    limits: Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    sentence_gates: dict[str, Tensor] | None = None,
) -> list[list[int]]:
    """Beam search from encoder memory (B, S, C) with per-sentence length limits (B,).

    Sentences whose K hypotheses have all ended leave the batch (their result cannot change any more), so
    the steps after them cost only what is left. `sentence_gates` gives decoder components one gate per
    sentence ({"dec.0.ff": (B,)}), kept aligned with the shrinking batch and restored afterwards."""
    pad = model.cfg.pad_id
    B, K = mem.size(0), beam_size
    dev = mem.device
    # mem stays one row per sentence: the K beams of a sentence attend to it together (see
    # MultiHeadAttention.forward), and its keys and values are cached once per sentence
    cache = model.new_cache()
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first at step 0
    token = torch.full((B * K,), start_id(model, bos_id), dtype=torch.long, device=dev)
    done = torch.zeros(B * K, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B * K, device=dev)
    history = torch.empty(B * K, 0, dtype=torch.long, device=dev)
    limits = limits.repeat_interleave(K)  # (B*K,)
    active = torch.arange(B, device=dev)  # which sentences the rows belong to, K rows each
    results: list[list[int]] = [[] for _ in range(B)]
    modules = {n: model.get_submodule(n) for n in sentence_gates or {}}
    saved = {n: m.gate for n, m in modules.items()}

    def set_gates() -> None:
        for n, m in modules.items():
            m.gate = saved[n] * sentence_gates[n].index_select(0, active).repeat_interleave(K)  # type: ignore[index]

    def finish(which: Tensor) -> None:
        """Store the best hypothesis (score / length penalty) of the sentences at active positions `which`."""
        b = scores.size(0)
        best = (scores.view(-1) / length_penalty(lengths, alpha)).view(b, K).argmax(-1)  # (b,)
        rows = which * K + best.index_select(0, which)
        for sent, row in zip(
            active.index_select(0, which).tolist(), history.index_select(0, rows).tolist(), strict=True
        ):
            results[sent] = row

    try:
        set_gates()
        for step in range(int(limits.max())):
            b = active.numel()
            base = (torch.arange(b, device=dev) * K).unsqueeze(1)  # (b, 1) first row of each sentence's beams
            logp = model.decode_step(token, mem, mem_mask, cache, step).float().log_softmax(-1)  # (b*K, V)
            V = logp.size(-1)
            ban_pad(logp, model)  # after the log-softmax, as HF's logits processors in beam search
            force_eos(logp, (limits == step + 1) & ~done, eos_id)
            # a finished hypothesis may only extend with pad, at no cost
            logp[done] = float("-inf")
            logp[done, pad] = 0.0
            cand = (scores.unsqueeze(-1) + logp.view(b, K, V)).view(b, K * V)  # (b, K*V)
            scores, flat = cand.topk(K, dim=-1)  # (b, K)
            rows = (base + flat // V).view(-1)  # (b*K,) which old hypothesis each new one extends
            token = (flat % V).view(-1)
            history = torch.cat([history.index_select(0, rows), token[:, None]], 1)
            was_done = done.index_select(0, rows)
            lengths = lengths.index_select(0, rows) + (~was_done).float()
            done = was_done | (token == eos_id)
            model.reorder_cache(cache, rows)
            ended = done.view(b, K).all(1) | settled(scores, lengths, done, limits, alpha)  # (b,)
            if bool(ended.any()):
                finish(ended.nonzero().squeeze(1))
                keep = (~ended).nonzero().squeeze(1)
                if keep.numel() == 0:
                    return _strip(results, eos_id, pad)
                rows = (keep[:, None] * K + torch.arange(K, device=dev)).view(-1)
                token, done, lengths, history, limits = (
                    t.index_select(0, rows) for t in (token, done, lengths, history, limits)
                )
                mem, mem_mask, scores = (t.index_select(0, keep) for t in (mem, mem_mask, scores))
                active = active.index_select(0, keep)
                model.reorder_cache(cache, rows, sentences=keep)
                set_gates()
        finish(torch.arange(active.numel(), device=dev))
        return _strip(results, eos_id, pad)
    finally:
        for n, m in modules.items():
            m.gate = saved[n]


@torch.no_grad()
def hf_beam_search(
    model: Transformer,
    src: Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    max_new_tokens: int = 64,
    *,
    min_new_tokens: int = 0,
    no_repeat_ngram_size: int = 0,
    banned: Sequence[int] | None = None,
    force_eos: bool = True,
    forced_bos: int | None = None,
    renormalize: bool = False,
    start: int | None = None,
) -> list[list[int]]:
    """Beam search as Hugging Face's `generate(num_beams=K, length_penalty=L, early_stopping=...,
    max_new_tokens=N, forced_eos_token_id=eos)` (transformers 5), for parity with imported checkpoints
    (prunelab.hf.generation decodes with a checkpoint's own settings through it); prunelab's own `beam_search`
    differs on purpose (finished hypotheses keep their slot, GNMT length penalty).

    HF's algorithm: K open beams always continue; of the 2K best continuations, those ending in EOS among the
    first K enter a pool of K finished hypotheses scored sum log p / |Y|^L (|Y| counts EOS), the others refill the
    open beams. The last step may only emit EOS, at log-probability 0 (HF's ForcedEOSTokenLogitsProcessor). A
    sentence stops taking hypotheses when its best open beam cannot beat its worst finished one (HF's heuristic:
    the open score over the current length, or over the longest length with early_stopping="never" and L > 0),
    or, with early_stopping=True, once K have finished. Returns the best pooled hypothesis, without EOS.

    The rest of `generate`'s logits processors, applied to the log-probabilities in its order: no n-gram of
    `no_repeat_ngram_size` tokens twice in a hypothesis (the decoder start counted, as HF counts it), the `banned`
    ids never (None: the model's `ban_pad` rule), no EOS before `min_new_tokens` tokens, the first token
    `forced_bos` alone, at log-probability 0 (HF's ForcedBOSTokenLogitsProcessor: mBART-50's target language
    code), EOS forced at the last step (`force_eos`; without it the limit ends hypotheses without EOS), and with
    `renormalize` a log-softmax after them all (HF's renormalize_logits). `start`: the decoder's first input
    (default `start_id`)."""
    K, pad, neg = beam_size, model.cfg.pad_id, -1.0e9
    B, dev = src.size(0), src.device
    mem, mem_mask = model.encode(src)  # one row per sentence: its K beams share it
    cache = model.new_cache()
    first = start_id(model, bos_id) if start is None else start
    token = torch.full((B * K,), first, dtype=torch.long, device=dev)
    bans = torch.tensor(list(banned or ()), dtype=torch.long, device=dev)
    run_scores = torch.full((B, K), neg, device=dev)
    run_scores[:, 0] = 0.0
    run_seq = torch.empty(B, K, 0, dtype=torch.long, device=dev)
    pool_seq = torch.full((B, K, max_new_tokens), pad, dtype=torch.long, device=dev)
    pool_scores = torch.full((B, K), neg, device=dev)
    pool_done = torch.zeros(B, K, dtype=torch.bool, device=dev)
    hopeful = torch.ones(B, 1, dtype=torch.bool, device=dev)  # HF's is_early_stop_heuristic_unsatisfied
    top_k = torch.zeros(2 * K, dtype=torch.bool, device=dev)
    top_k[:K] = True
    for step in range(max_new_tokens):
        logp = model.decode_step(token, mem, mem_mask, cache, step).float().log_softmax(-1)  # (B*K, V)
        if no_repeat_ngram_size:
            prefix = torch.cat([run_seq.new_full((B, K, 1), first), run_seq], 2).view(B * K, step + 1)
            ban_repeated_ngrams(logp, prefix, no_repeat_ngram_size)
        if banned is None:
            ban_pad(logp, model)
        elif bans.numel():
            logp[:, bans] = float("-inf")
        if step < min_new_tokens:
            logp[:, eos_id] = float("-inf")
        if step == 0 and forced_bos is not None:  # after the bans: the forced token is taken even if banned
            logp.fill_(float("-inf"))
            logp[:, forced_bos] = 0.0
        last = step == max_new_tokens - 1
        if last and force_eos:  # only EOS, at no cost
            logp.fill_(float("-inf"))
            logp[:, eos_id] = 0.0
        if renormalize:
            logp = logp.log_softmax(-1)
        V = logp.size(-1)
        acc = (logp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)
        cand_scores, flat = acc.topk(2 * K, dim=-1)  # (B, 2K)
        beam, tok = flat // V, flat % V
        cand_seq = torch.cat([run_seq.gather(1, beam[:, :, None].expand(-1, -1, step)), tok[:, :, None]], 2)
        hits = (tok == eos_id) | last  # (B, 2K) EOS, or the length limit
        # the open beams: the K best continuations that did not finish
        open_scores = cand_scores + hits.float() * neg
        keep = open_scores.topk(K, dim=-1).indices  # (B, K)
        run_scores = open_scores.gather(1, keep)
        run_seq = cand_seq.gather(1, keep[:, :, None].expand(-1, -1, step + 1))
        rows = (torch.arange(B, device=dev)[:, None] * K + beam.gather(1, keep)).view(-1)
        # the pool: finished ones among the first K candidates, length-normalised, merged with the pool's best K
        just = hits & top_k
        norm = cand_scores / float(step + 1) ** length_penalty
        full = pool_done.all(-1, keepdim=True) & (early_stopping is True)
        norm = norm + full.float() * neg + (~hopeful).float() * neg + (~just).float() * neg
        padded = torch.cat([cand_seq, cand_seq.new_full((B, 2 * K, max_new_tokens - step - 1), pad)], 2)
        m_seq = torch.cat([pool_seq, padded], 1)
        m_scores = torch.cat([pool_scores, norm], 1)
        m_done = torch.cat([pool_done, just], 1)
        best = m_scores.topk(K, dim=-1).indices
        pool_seq = m_seq.gather(1, best[:, :, None].expand(-1, -1, max_new_tokens))
        pool_scores, pool_done = m_scores.gather(1, best), m_done.gather(1, best)
        # HF's stopping test, with cur_len - prompt_len = step + 1 tokens generated
        length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else step + 1
        best_open = run_scores[:, :1] / float(length) ** length_penalty
        worst = torch.where(pool_done, pool_scores.min(1, keepdim=True).values, neg)
        hopeful = hopeful & (best_open > worst).any(-1, keepdim=True)
        if not bool(hopeful.any()) or (bool(pool_done.all()) and early_stopping is True) or bool(hits.all()):
            break
        token = run_seq[:, :, -1].reshape(-1)
        model.reorder_cache(cache, rows)
    return _strip(pool_seq[:, 0].tolist(), eos_id, pad)


def ban_repeated_ngrams(logp: Tensor, seqs: Tensor, n: int) -> None:
    """No n-gram twice (in place, HF's no_repeat_ngram_size): for each row of `seqs` (R, L), the tokens that would
    complete an n-gram the row already holds, after its last n-1 tokens, get log-probability -inf."""
    L = seqs.size(1)
    if n < 1 or L < n:
        return
    grams = seqs.unfold(1, n, 1)  # (R, L-n+1, n): every n-gram of every row
    hit = (grams[:, :, :-1] == seqs[:, L - n + 1 :].unsqueeze(1)).all(-1)  # (R, L-n+1) its prefix is the row's end
    rows, at = hit.nonzero(as_tuple=True)
    logp[rows, grams[rows, at, -1]] = float("-inf")


def _strip(rows: list[list[int]], eos_id: int, pad_id: int) -> list[list[int]]:
    out = []
    for row in rows:
        if eos_id in row:
            row = row[: row.index(eos_id)]
        out.append([t for t in row if t != pad_id])
    return out
