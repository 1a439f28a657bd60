"""Beam search pinned against brute force: the returned hypothesis maximises log P(Y|X) / lp(|Y|), and the
length limit is exactly floor(a * |x| + b) tokens.

Definitions (those of `prunelab.models.decoding`, GNMT's length penalty, Wu et al. 2016):
    lp(|Y|) = ((5 + |Y|) / 6) ** alpha
    |Y|     = the number of generated tokens, the final EOS INCLUDED (a hypothesis "a b EOS" has |Y| = 3)
    |x|     = the source's non-pad tokens (its EOS included)
    limit   = floor(max_len_a * |x| + max_len_b) generated tokens, EOS included (a forced EOS at the limit),
              never more than the model's max_len positions.

The reference is computed independently: every target sequence a tiny real Transformer could produce within
the limit is enumerated and scored by teacher forcing (`model(src, tgt_in)`, no key/value cache), and the
objective is applied by hand. The beam is made wider than the number of hypotheses that can exist, so the
search is exact and must return the brute-force argmax.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from prunelab.models import Transformer, TransformerConfig
from prunelab.models.decoding import beam_search, greedy_decode

PAD, BOS, EOS = 0, 1, 2
VOCAB = 6  # real tokens 3, 4, 5
REAL = list(range(3, VOCAB))
A, B = 0.5, 3  # limits floor(0.5 * |x| + 3): 4 or 5 tokens (EOS included) for the sources below
SRC = torch.tensor(
    [
        [3, 2, 0, 0, 0],
        [4, 4, 3, 2, 0],
        [5, 3, 4, 3, 2],
        [4, 2, 0, 0, 0],
        [5, 5, 2, 0, 0],
        [3, 4, 5, 2, 0],
    ]
)


class Restricted(Transformer):
    """A real tiny Transformer whose output logits get a fixed bias: PAD and BOS pushed out of reach (so every
    hypothesis is a sequence of real tokens, and stripping pads cannot hide anything), EOS shifted to make
    hypotheses of several lengths competitive. Both decoding paths (decode_step and the teacher-forced
    forward) go through `logits`, so the brute force scores exactly the distribution beam search sees."""

    def __init__(self, cfg: TransformerConfig, scale: float = 1.0, eos_bias: float = 0.0):
        super().__init__(cfg)
        bias = torch.zeros(cfg.vocab_size)
        bias[PAD] = bias[BOS] = -1e4
        bias[EOS] = eos_bias
        self.register_buffer("bias", bias)
        self.scale = scale

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return super().logits(x) * self.scale + self.bias


def restricted(eos_bias: float = -1.0, max_len: int = 32) -> Restricted:
    torch.manual_seed(11)  # chosen so that the winners differ between the alphas (asserted below)
    cfg = TransformerConfig(
        vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dec_layers=2, dropout=0.0, max_len=max_len
    )
    return Restricted(cfg, eos_bias=eos_bias).eval()


def limit_by_hand(src_row: torch.Tensor, a: float, b: int) -> int:
    return math.floor(a * sum(1 for t in src_row.tolist() if t != PAD) + b)


def all_objectives(
    model: Transformer, src_row: torch.Tensor, limit: int, alpha: float, eos_in_length: bool = True
) -> dict[tuple[int, ...], float]:
    """Every hypothesis (real tokens then EOS, at most `limit` tokens with the EOS) -> log P(Y|X) / lp."""
    seqs = [(*p, EOS) for n in range(1, limit + 1) for p in itertools.product(REAL, repeat=n - 1)]
    tgt_in = torch.tensor([[BOS, *s[:-1]] + [PAD] * (limit - len(s)) for s in seqs])  # causal: padding after is unseen
    with torch.no_grad():
        logp = model(src_row.expand(len(seqs), -1), tgt_in).double().log_softmax(-1)  # (N, limit, V)
    out = {}
    for k, s in enumerate(seqs):
        score = sum(float(logp[k, t, tok]) for t, tok in enumerate(s))
        length = len(s) if eos_in_length else len(s) - 1
        out[s[:-1]] = score / ((5 + length) / 6) ** alpha
    return out


def brute_force(model: Transformer, alpha: float, eos_in_length: bool = True) -> list[tuple[int, ...]]:
    winners = []
    for row in SRC:
        obj = all_objectives(model, row[None], limit_by_hand(row, A, B), alpha, eos_in_length)
        ranked = sorted(obj.items(), key=lambda kv: -kv[1])
        assert ranked[0][1] - ranked[1][1] > 1e-4  # a clear winner: float32 decoding cannot tie-break differently
        winners.append(ranked[0][0])
    return winners


def test_fixture_discriminates_alphas_and_the_length_definition() -> None:
    """Guard: the fixture is one where the planted bugs would show (alpha ignored, EOS not counted in |Y|)."""
    model = restricted()
    wins = {a: brute_force(model, a) for a in (0.0, 0.6, 1.5)}
    for x, y in itertools.combinations(wins, 2):
        assert wins[x] != wins[y], (x, y)
    assert any(brute_force(model, a, eos_in_length=False) != wins[a] for a in (0.6, 1.5))
    assert {limit_by_hand(r, A, B) for r in SRC} == {4, 5}
    assert {len(w) for ws in wins.values() for w in ws} >= {0, 1, 2, 3, 4}  # empty up to the full limit


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_beam_search_returns_the_brute_force_argmax(alpha: float) -> None:
    model = restricted()
    expected = brute_force(model, alpha)
    # at most sum_{n<=5} 3^(n-1) = 121 hypotheses exist at any step: a beam of 128 keeps them all
    got = beam_search(model, SRC, BOS, EOS, beam_size=128, alpha=alpha, max_len_a=A, max_len_b=B)
    assert [tuple(h) for h in got] == expected


class FakeDecoder:
    """The decoding interface beam search uses (encode, new_cache, decode_step, reorder_cache, cfg, max_positions),
    with the next-token distribution given by a Python function of (source tokens, prefix): the cache holds each
    row's prefix, so a wrong reordering of the cache would show too."""

    def __init__(self, dist: Callable[[tuple[int, ...], tuple[int, ...]], list[float]], max_len: int = 64):
        self.cfg = SimpleNamespace(pad_id=PAD, max_len=max_len)
        self.max_positions = max_len  # the longest sequence its positions hold (Transformer.max_positions)
        self.dist = dist

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return src.float()[:, :, None], (src != PAD)[:, None, None, :]

    def new_cache(self) -> dict[str, torch.Tensor]:
        return {}

    def decode_step(
        self, token: torch.Tensor, mem: torch.Tensor, mem_mask: torch.Tensor, cache: dict, step: int
    ) -> torch.Tensor:
        rows, K = token.size(0), token.size(0) // mem.size(0)
        prefix = (
            torch.zeros(rows, 0, dtype=torch.long) if step == 0 else torch.cat([cache["prefix"], token[:, None]], 1)
        )
        cache["prefix"] = prefix
        out = []
        for r in range(rows):
            src = tuple(int(t) for t in mem[r // K, :, 0].tolist() if t != PAD)
            out.append(self.dist(src, tuple(prefix[r].tolist())))
        return torch.tensor(out)

    @staticmethod
    def reorder_cache(cache: dict, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        cache["prefix"] = cache["prefix"].index_select(0, rows)


def late_winner(src: tuple[int, ...], prefix: tuple[int, ...]) -> list[float]:
    """EOS is the likeliest first token, but after a 3 the continuation "3 3 EOS" is almost certain: with a
    strong length penalty the long hypothesis wins although, at step 1, every open beam's score is below the
    finished EOS's. Beam search may only stop early when no open beam can still win by its length limit."""
    probs = {EOS: 0.25, 3: 0.25, 4: 0.25, 5: 0.25}
    if prefix == ():
        probs = {EOS: 0.45, 3: 0.35, 4: 0.15, 5: 0.05}
    elif prefix in ((3,), (3, 3)):
        probs = {EOS: 0.01, 3: 0.98, 4: 0.005, 5: 0.005}
    elif prefix == (3, 3, 3):
        probs = {EOS: 0.98, 3: 0.01, 4: 0.005, 5: 0.005}
    return [-1e4, -1e4] + [math.log(probs[t]) for t in (EOS, *REAL)]


def fake_brute_force(dist: Callable, src: tuple[int, ...], limit: int, alpha: float) -> tuple[int, ...]:
    best, best_obj = (), -math.inf
    for n in range(1, limit + 1):
        for p in itertools.product(REAL, repeat=n - 1):
            seq = (*p, EOS)
            score = 0.0
            for t, tok in enumerate(seq):
                logits = torch.tensor(dist(src, seq[:t]), dtype=torch.float64)
                score += float(logits.log_softmax(-1)[tok])
            obj = score / ((5 + len(seq)) / 6) ** alpha
            if obj > best_obj:
                best, best_obj = p, obj
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
@pytest.mark.parametrize("beam", [2, 128])
def test_early_stopping_never_drops_an_open_hypothesis_that_can_still_win(alpha: float, beam: int) -> None:
    src = torch.tensor([[3, 4, 2, 0], [4, 3, 5, 2]])  # limits floor(0.5 * 3 + 3) = 4 and floor(0.5 * 4 + 3) = 5
    expected = [
        fake_brute_force(late_winner, tuple(t for t in r.tolist() if t), limit_by_hand(r, A, B), alpha) for r in src
    ]
    assert expected == ([(3, 3, 3)] * 2 if alpha == 1.5 else [(), ()])  # the case is what it means to be
    got = beam_search(FakeDecoder(late_winner), src, BOS, EOS, beam_size=beam, alpha=alpha, max_len_a=A, max_len_b=B)
    assert [tuple(h) for h in got] == expected


def test_a_never_ending_decoder_stops_at_exactly_a_x_plus_b_tokens() -> None:
    """EOS is never chosen unless forced: every output has limit - 1 real tokens plus the forced EOS (stripped),
    with the limit floor(a|x| + b) counted on the source's non-pad tokens."""
    model = restricted(eos_bias=-1e4)
    src = torch.tensor([[3, 2, 0, 0, 0], [4, 3, 2, 0, 0], [5, 4, 3, 2, 0], [3, 3, 4, 4, 2], [2, 0, 0, 0, 0]])
    a, b = 1.5, 2
    expected = [limit_by_hand(r, a, b) - 1 for r in src]
    assert expected == [4, 5, 7, 8, 2]  # floor(3+2)-1, floor(4.5+2)-1, floor(6+2)-1, floor(7.5+2)-1, floor(1.5+2)-1
    for beam in (1, 3):
        got = beam_search(model, src, BOS, EOS, beam_size=beam, alpha=0.6, max_len_a=a, max_len_b=b)
        assert [len(h) for h in got] == expected, beam
        assert all(set(h) <= set(REAL) for h in got)
    got = greedy_decode(model, src, BOS, EOS, max_len_a=a, max_len_b=b)
    assert [len(h) for h in got] == expected


def test_the_limit_never_passes_the_model_positions() -> None:
    model = restricted(eos_bias=-1e4, max_len=12)
    got = beam_search(model, SRC[:2], BOS, EOS, beam_size=2, alpha=0.6, max_len_a=1.0, max_len_b=100)
    assert [len(h) for h in got] == [11, 11]  # 12 positions: 11 tokens and the forced EOS
