"""A model's score under many variants (sets of components or heads zeroed), the variants decoded side by side.

Every ablation of one batch is decoded in one batched pass: the sentences are repeated once per variant (the
unablated model, then one copy per component), every copy with its own per-example gates. The encoder runs on the
unablated copy and the encoder-ablation copies only; decoder ablations reuse the unablated encoder output.
`ablation_bleu` stops an ablation as soon as its BLEU provably cannot end above a floor (`BleuStats.upper_bound`).
For a classifier the score is accuracy in percent, one forward pass per variant.
The decoding is prunelab's GNMT beam (`DecodeSettings`); `decode_settings` reads a run's own, which is a checkpoint's
Generation for a run that decoded with it (scoring.scoring.GenerateBleuScorer scores those).

Scoring floor: above criteria/ (gates_off) and hf/ (a checkpoint's decoding), below pruning/, callbacks/ and tasks/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sacrebleu
import torch
from torch import Tensor

from prunelab.criteria.ablation import gates_off
from prunelab.data.tokenizer import Tokenizer
from prunelab.hf.generation import Generation, checkpoint_decoding, with_beams, with_target_code
from prunelab.metrics import bleu
from prunelab.models.addressing import component, component_names
from prunelab.models.decoding import beam_search_memory, max_target_lens
from prunelab.models.transformer import Transformer
from prunelab.scoring.scores import accuracy

Batch = dict[str, Any]


@dataclass
class DecodeSettings:
    beam_size: int = 4
    alpha: float = 0.6
    max_len_a: float = 1.5
    max_len_b: int = 10


def decode_settings(
    config: dict[str, Any], beam_size: int | None = None, model: Transformer | None = None, tokenizer: Any = None
) -> DecodeSettings | Generation:
    """A run's own validation decoding from its config as results.json holds it, the beam width overridden by
    `beam_size` when given: prunelab's beam (width, length penalty, length limits), or, for a run of `model`
    that decoded with its checkpoint's own settings (an imported checkpoint, `task.decoding`), that Generation,
    forcing the `tokenizer`'s target language code first as the run did (mBART-50, M2M100, NLLB)."""
    task = config.get("task", {})
    if model is not None and "decoding" in task:
        generation = checkpoint_decoding(model, task["decoding"], task.get("generation"))
        if generation is not None:
            if tokenizer is not None:
                generation = with_target_code(
                    generation, getattr(tokenizer, "target_code_id", None), getattr(tokenizer, "tgt_code", None)
                )
            return generation if beam_size is None else with_beams(generation, beam_size)
    return DecodeSettings(
        beam_size=beam_size or task.get("val_beam_size") or task.get("beam_size", 4),
        alpha=task.get("length_penalty", 0.6),
        max_len_a=task.get("max_len_a", 1.5),
        max_len_b=task.get("max_len_b", 10),
    )


def decoding_report(settings: DecodeSettings | Generation) -> dict[str, Any]:
    """How a study decoded, as its JSON records it (the same fields as a run's results.json `decoding`)."""
    if isinstance(settings, Generation):
        return settings.report()
    return {"decoder": "prunelab", "algorithm": "gnmt_beam_search", **settings.__dict__}


@dataclass
class AblationResult:
    baseline: float  # BLEU of the unablated model (accuracy % for a classifier)
    bleu: dict[str, float | None]  # the score with each component zeroed; None where decoding stopped early
    bleu_upper_bound: dict[str, float]  # for components whose decoding stopped early: BLEU is at most this
    passes: int  # batched decoding passes
    seconds: float  # everything, the unablated decode included
    baseline_seconds: float  # the unablated decode alone: one full decode of the data
    sentences_decoded: int = 0  # sentences x variants actually decoded
    sentences_total: int = 0  # sentences x variants without early stopping

    @property
    def drops(self) -> dict[str, float]:
        """BLEU drop per component; where decoding stopped early, a lower bound that is >= the clip C."""
        return {c: self.baseline - (b if b is not None else self.bleu_upper_bound[c]) for c, b in self.bleu.items()}

    @property
    def stopped(self) -> list[str]:
        return [c for c, b in self.bleu.items() if b is None]


@contextmanager
def per_example_gates(model: Transformer, gates: dict[str, Tensor]) -> Iterator[None]:
    """Give the named components one gate per example row for the duration of the block."""
    modules = {n: component(model, n) for n in gates}
    saved = {n: m.gate for n, m in modules.items()}
    try:
        for n, m in modules.items():
            m.gate = gates[n] * saved[n]  # a component gated off before stays off
        yield
    finally:
        for n, m in modules.items():
            m.gate = saved[n]


@torch.no_grad()
def decode_variants(
    model: Transformer, src: Tensor, variants: Sequence[frozenset[str]], tok: Tokenizer, settings: DecodeSettings
) -> list[list[list[int]]]:
    """Decode `src` (B, S) under every variant (a set of components zeroed) in one batched pass.
    -> token ids per variant, each a list of B sentences. The encoder runs once per distinct set of
    encoder components among the variants; variants that zero only decoder components share its output."""
    B, dev = src.size(0), src.device
    enc_sets: list[frozenset[str]] = []
    for v in variants:
        e = frozenset(n for n in v if n.startswith("enc."))
        if e not in enc_sets:
            enc_sets.append(e)
    enc_names = sorted(set().union(*enc_sets)) if enc_sets else []
    enc_gates = {n: torch.tensor([0.0 if n in e else 1.0 for e in enc_sets], device=dev) for n in enc_names}
    with per_example_gates(model, {n: g.repeat_interleave(B) for n, g in enc_gates.items()}):
        mem, mem_mask = model.encode(src.repeat(len(enc_sets), 1))  # (E*B, S, C)
    # every variant's rows take the memory of its encoder set
    pick = torch.cat(
        [torch.arange(B) + B * enc_sets.index(frozenset(n for n in v if n.startswith("enc."))) for v in variants]
    ).to(dev)
    mem, mem_mask = mem.index_select(0, pick), mem_mask.index_select(0, pick)
    dec_names = sorted({n for v in variants for n in v if not n.startswith("enc.")})
    dec_gates = {  # one gate per (variant, sentence); the beam search keeps it with the sentence's beams
        n: torch.tensor([0.0 if n in v else 1.0 for v in variants], device=dev).repeat_interleave(B) for n in dec_names
    }
    limits = max_target_lens(src, model.cfg.pad_id, settings.max_len_a, settings.max_len_b, model.cfg.max_len)
    out = beam_search_memory(
        model,
        mem,
        mem_mask,
        limits.repeat(len(variants)),
        tok.bos_id,
        tok.eos_id,
        settings.beam_size,
        settings.alpha,
        sentence_gates=dec_gates,
    )
    return [out[i * B : (i + 1) * B] for i in range(len(variants))]


def variant_accuracy(model: Transformer, batches: Sequence[Batch], zeroed: frozenset[str] | Sequence[str]) -> float:
    """Accuracy (%) of a classifier with the named components zeroed."""
    with gates_off(model, zeroed):
        return accuracy(model, batches)


def variants_bleu(
    model: Transformer,
    batches: Sequence[Batch],
    tok: Tokenizer,
    settings: DecodeSettings,
    variants: Sequence[frozenset[str]],
    chunk: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], int]:
    """Corpus BLEU under every variant; at most `chunk` variants share a pass. -> (BLEU per variant, passes)."""
    was_training = model.training
    model.eval()
    hyps: list[list[str]] = [[] for _ in variants]
    refs: list[str] = []
    passes = 0
    groups = [list(range(i, min(i + chunk, len(variants)))) for i in range(0, len(variants), chunk)]
    try:
        for i, b in enumerate(batches):
            for g in groups:
                outs = decode_variants(model, b["src"], [variants[j] for j in g], tok, settings)
                for j, out in zip(g, outs, strict=True):
                    hyps[j] += [tok.decode(h) for h in out]
                passes += 1
            refs += list(b["ref"])
            if progress:
                progress(i + 1, len(batches))
    finally:
        model.train(was_training)
    return [bleu(h, refs) for h in hyps], passes


class BleuStats:
    """Corpus BLEU from sufficient statistics, as sacrebleu computes it (the same tokenizer, smoothing and
    brevity penalty): per sentence [hyp_len, ref_len, correct_1..4, total_1..4], summed over the corpus."""

    def __init__(self) -> None:
        self.metric = sacrebleu.metrics.BLEU()

    def of(self, hyps: list[str], refs: list[str]) -> list[int]:
        rows = self.metric._extract_corpus_statistics(hyps, [refs])
        return [sum(col) for col in zip(*rows, strict=True)] if rows else [0] * 10

    def score(self, stats: list[int]) -> float:
        return float(self.metric._compute_score_from_stats(stats).score)

    def upper_bound(self, done: list[int], rest_refs: list[int]) -> float:
        """The highest BLEU the corpus can still reach when the sentences behind `rest_refs` (their references'
        statistics as if translated perfectly) get any translation at all: each n-gram precision is at most
        (correct + R_n) / (total + R_n), R_n the references' n-gram count, and the brevity penalty at most 1. An
        order of which the corpus has no n-gram yet counts one: a translation may still add one (with no match,
        its smoothed precision is then at most the one-n-gram value; with none, sacrebleu scores the corpus 0)."""
        stats = [a + b for a, b in zip(done, rest_refs, strict=True)]
        ref_len = stats[1]
        res = sacrebleu.metrics.BLEU.compute_bleu(
            stats[2:6], [max(t, 1) for t in stats[6:10]], ref_len, ref_len, smooth_method=self.metric.smooth_method
        )
        return float(res.score)


def ablation_bleu(
    model: Transformer,
    batches: Sequence[Batch],
    tok: Tokenizer,
    settings: DecodeSettings,
    names: Sequence[str] | None = None,
    stop_below: float | None = 0.1,
    max_rows: int = 1024,
    progress: Callable[[int, int], None] | None = None,
) -> AblationResult:
    """Corpus BLEU of the unablated model and of the model with each component (default: all) zeroed.

    The unablated model is decoded first. Then the ablations are decoded batch by batch, side by side
    (`decode_variants`, at most `max_rows` beam rows per pass), and with `stop_below` = c an ablation stops
    as soon as its BLEU provably cannot end above baseline x (1 - c): its drop then exceeds Eq. 1's clip
    C = c x baseline, so its contribution is exactly 1 whatever the rest would give. stop_below=None
    decodes everything (exact drops for every component)."""
    names = list(names if names is not None else component_names(model))
    was_training = model.training
    model.eval()
    bs = BleuStats()
    t0 = time.perf_counter()
    refs = [list(b["ref"]) for b in batches]
    try:
        base_stats = [0] * 10
        for b, r in zip(batches, refs, strict=True):
            (out,) = decode_variants(model, b["src"], [frozenset()], tok, settings)
            base_stats = [x + y for x, y in zip(base_stats, bs.of([tok.decode(h) for h in out], r), strict=True)]
        baseline = bs.score(base_stats)
        baseline_seconds = time.perf_counter() - t0
        floor = baseline * (1 - stop_below) if stop_below is not None else None
        # each reference as if translated perfectly: what the sentences not yet decoded can still add
        ref_rows = [bs.metric._extract_corpus_statistics(r, [r]) for r in refs]
        rest = [sum(col) for col in zip(*(row for rows in ref_rows for row in rows), strict=True)]
        stats = {n: [0] * 10 for n in names}
        active = list(names)
        bound: dict[str, float] = {}
        passes, decoded = len(batches), sum(len(r) for r in refs)
        # longest sentences first: they carry the most n-grams, so the bound tightens fastest per sentence
        by_length = sorted(range(len(batches)), key=lambda j: -batches[j]["src"].size(1))
        for done_batches, i in enumerate(by_length, 1):
            b, r = batches[i], refs[i]
            start = 0
            while start < len(r) and active:
                # as many sentences as fit max_rows beam rows with every active ablation side by side
                take = max(1, max_rows // (settings.beam_size * len(active)))
                src, part = b["src"][start : start + take], r[start : start + take]
                outs = decode_variants(model, src, [frozenset([n]) for n in active], tok, settings)
                for n, out in zip(active, outs, strict=True):
                    got = bs.of([tok.decode(h) for h in out], part)
                    stats[n] = [x + y for x, y in zip(stats[n], got, strict=True)]
                passes += 1
                decoded += len(part) * len(active)
                for row in ref_rows[i][start : start + take]:
                    rest = [x - y for x, y in zip(rest, row, strict=True)]
                start += take
                if floor is not None:
                    for n in list(active):
                        ub = bs.upper_bound(stats[n], rest)
                        if ub <= floor:
                            bound[n] = ub
                            active.remove(n)
            if progress:
                progress(done_batches, len(batches))
    finally:
        model.train(was_training)
    return AblationResult(
        baseline=baseline,
        bleu={n: (None if n in bound else bs.score(stats[n])) for n in names},
        bleu_upper_bound=bound,
        passes=passes,
        seconds=time.perf_counter() - t0,
        baseline_seconds=baseline_seconds,
        sentences_decoded=decoded,
        sentences_total=sum(len(r) for r in refs) * (len(names) + 1),
    )


def exact_ablation(
    model: Transformer,
    names: Sequence[str],
    score: Callable[[], float],
    examples: int,
    batches: int,
    progress: Callable[[int, int], None] | None = None,
) -> AblationResult:
    """`score()` of the unablated model, then with each named component zeroed in turn, each in full (every drop
    exact, nothing stopped early): a classifier's accuracy, or BLEU under a checkpoint's own decoding. `examples` and
    `batches`: the size of the data `score` goes over."""
    t0 = time.perf_counter()
    baseline = score()
    baseline_seconds = time.perf_counter() - t0
    scores: dict[str, float | None] = {}
    for done, name in enumerate(names, 1):
        with gates_off(model, [name]):
            scores[name] = score()
        if progress:
            progress(done, len(names))
    return AblationResult(
        baseline=baseline,
        bleu=scores,
        bleu_upper_bound={},
        passes=batches * (len(names) + 1),
        seconds=time.perf_counter() - t0,
        baseline_seconds=baseline_seconds,
        sentences_decoded=examples * (len(names) + 1),
        sentences_total=examples * (len(names) + 1),
    )


def ablation_accuracy(model: Transformer, batches: Sequence[Batch], names: Sequence[str]) -> AblationResult:
    """ablation_bleu for a classifier: accuracy (%) unablated and with each component zeroed, one forward
    pass over the data each (cheap enough that nothing is skipped; every drop is exact)."""
    examples = sum(len(b["label"]) for b in batches)
    return exact_ablation(model, names, lambda: accuracy(model, batches), examples, len(batches))
