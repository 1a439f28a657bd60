"""Token streams and windows of causal language-modeling data (floor: data): how a split's documents become one
token stream, how the stream is cut into windows as the pruning literature measures perplexity, and how windows are
batched. `language_modeling.py` (the data modules of that kind) builds on it; the streams' two protocols are named
there (`STREAMS`).

Windows (`windows`):
    non-overlapping (`data.stride=null`, and always for training): the stream cut into windows of `seq_len` tokens,
        the trailing partial window dropped (its tokens are counted: `dropped_tokens`); in each window every token
        after the first is predicted from those before it (seq_len-1 targets a window).
    strided (`data.stride=s`, 1 <= s < seq_len): Hugging Face's "perplexity of fixed-length models": windows of up to
        seq_len tokens starting every s tokens, the last one ending where the stream ends; each scores only the tokens
        the previous window did not score (its earlier tokens are context), so every token after the stream's first is
        scored exactly once, from the tokens before it in its window: at least seq_len-s of them (or all there are),
        at most seq_len-1.
    Perplexity = exp(mean NLL over all predicted tokens of a split).

Batches (`collate_lm`), a flat dict:
    src       (B, T) long: window[:-1], right-padded with the pad id (the tokenizer's, else its EOS id)
    target    (B, T) long: window[1:], -100 where a token is not scored (a strided window's context, padding)
    real      (B, T) bool: the input positions that are not padding (the pad id may be EOS, which also occurs in text)
    n_tokens  int: the scored targets of the batch
    idx       (B,) long: the window's index in its split
    ref       list of "" (B of them): for code that counts examples by len(batch["ref"])
"""

from __future__ import annotations

import array
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from prunelab.data.tokenizer import Tokenizer

IGNORE = -100  # a target that is not scored (torch's cross_entropy ignore_index)


class Window(NamedTuple):
    """One example: `ids`, seq_len tokens of a split's stream (fewer only for a strided split's last window), starting
    at stream position `start`; its tokens at positions >= `score_from` (>= 1) are predicted, the earlier ones are
    context only. `idx`: its index among its split's windows."""

    ids: Sequence[int]
    score_from: int
    idx: int
    start: int


def window_spans(n: int, seq_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, score_from) of the windows over a stream of `n` tokens (see the module doc): stride None, the
    non-overlapping windows [k*seq_len, (k+1)*seq_len) each scored from its position 1; else Hugging Face's strided
    windows, each scoring the tokens at and after the previous window's end."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (a window predicts its tokens after the first), got {seq_len}")
    if stride is None:
        return [(k * seq_len, (k + 1) * seq_len, 1) for k in range(n // seq_len)]
    if not 1 <= stride < seq_len:
        raise ValueError(f"stride must be in [1, seq_len) = [1, {seq_len}), got {stride}")
    spans: list[tuple[int, int, int]] = []
    if n < 2:
        return spans
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        spans.append((begin, end, max(prev_end - begin, 1)))  # the first window: position 0 has no context
        prev_end = end
        if end == n:
            break
    return spans


def windows(ids: Sequence[int], seq_len: int, stride: int | None = None) -> list[Window]:
    """The windows of the token stream `ids` (a list, or a numpy array whose windows are then views of it)."""
    return [Window(ids[b:e], s, i, b) for i, (b, e, s) in enumerate(window_spans(len(ids), seq_len, stride))]


def scored_targets(w: Window) -> int:
    """How many of the window's tokens are predicted."""
    return len(w.ids) - w.score_from


def collate_lm(examples: Sequence[Window], pad_id: int) -> dict[str, Any]:
    """Windows -> the batch of the module doc: src = window[:-1] padded, target = window[1:], IGNORE where unscored."""
    B = len(examples)
    T = max(len(w.ids) for w in examples) - 1
    src = torch.full((B, T), pad_id, dtype=torch.long)
    target = torch.full((B, T), IGNORE, dtype=torch.long)
    real = torch.zeros((B, T), dtype=torch.bool)
    n_tokens = 0
    for i, w in enumerate(examples):
        ids = torch.as_tensor(np.asarray(w.ids, dtype=np.int64))
        n = len(ids) - 1
        src[i, :n] = ids[:-1]
        real[i, :n] = True
        # target j is token j+1 of the window: scored when j + 1 >= score_from
        target[i, w.score_from - 1 : n] = ids[w.score_from :]
        n_tokens += n - (w.score_from - 1)
    return {
        "src": src,
        "target": target,
        "real": real,
        "n_tokens": n_tokens,
        "idx": torch.tensor([w.idx for w in examples], dtype=torch.long),
        "ref": [""] * B,
    }


def encode_documents(tok: Tokenizer, documents: Sequence[str], chunk: int = 1000) -> Iterator[list[int]]:
    """Each document's ids, no special tokens (a fast Hugging Face tokenizer encodes `chunk` documents a call)."""
    hf = getattr(tok, "hf", None)
    if hf is not None and getattr(hf, "is_fast", False):
        for i in range(0, len(documents), chunk):
            yield from hf(list(documents[i : i + chunk]), add_special_tokens=False)["input_ids"]
    else:
        for d in documents:
            yield tok.encode(d)


def token_stream(tok: Tokenizer, documents: Sequence[str], bos: bool = False) -> tuple[np.ndarray, int]:
    """([BOS] if bos, then encode(document) + [EOS] for every document with tokens) as an int32 array, and how many
    documents it holds."""
    out = array.array("i", [tok.bos_id] if bos else [])
    kept = 0
    for ids in encode_documents(tok, documents):
        if ids:
            out.extend(ids)
            out.append(tok.eos_id)
            kept += 1
    return np.frombuffer(out, dtype=np.intc) if len(out) else np.zeros(0, dtype=np.int32), kept


def text_stream(tok: Tokenizer, text: str, bos: bool = False) -> np.ndarray:
    """The `joined` stream of one text as an int32 array: a checkpoint's tokenizer called on it as the references do,
    `tokenizer(text)["input_ids"]` (its own special tokens, no others); prunelab's own tokenizers have no such call:
    [BOS if bos] + encode(text)."""
    hf = getattr(tok, "hf", None)
    ids = list(hf(text)["input_ids"]) if hf is not None else [*([tok.bos_id] if bos else []), *tok.encode(text)]
    return np.asarray(ids, dtype=np.int32)
