"""Imported pretrained-shaped models against Hugging Face transformers: a BERT-base classifier (training and
inference), an opus-mt-en-de-shaped MarianMT (training, greedy and beam-4 generation), and T5-base- and
M2M100-418M-shaped models (training and beam-4 generation with the checkpoint's generation settings).

Each HF model is built from its config with random weights (no network), saved with `save_pretrained` to a
temporary folder and imported from there by prunelab's own importer (`load_hf_encoder`, `load_hf_marian`,
`load_hf_t5`, `load_hf_m2m100`), so both sides compute the same network (checked: the max |logit difference| in
eval mode is in the note). Both run in this process, fp32, on the same threads, on the same batches, with HF's
default attention (sdpa) and the checkpoint's own dropout; training is forward + backward + AdamW step in train mode
with the loss computed the same way from each side's logits; the contenders are interleaved after a warm-up step
and each ratio is the median of the per-repetition ratios (prunelab / HF, so >= 1 means prunelab is at least as
fast)."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import torch
import torch.nn.functional as F
from harness import Figure, interleave, paired
from torch import Tensor

Batch = dict[str, Tensor]
SECTION = "pretrained"


# --- the batches (pure: shapes and padding only) ---------------------------------------------------------
def lengths(g: torch.Generator, batch: int, lo: int, hi: int) -> Tensor:
    """Sentence lengths in [lo, hi], the first one hi: the batch is padded to exactly hi (as a length-bucketed
    batch is padded to its longest sentence)."""
    n = torch.randint(lo, hi + 1, (batch,), generator=g)
    n[0] = hi
    return n


def pad_after(ids: Tensor, n: Tensor, pad: int) -> Tensor:
    """ids (B, T) with every position >= n[b] of row b set to pad (right padding)."""
    return ids.masked_fill(torch.arange(ids.size(1))[None] >= n[:, None], pad)


def classifier_batches(
    count: int,
    batch: int,
    seq: int,
    ids: tuple[int, int],
    pad: int,
    cls: int,
    sep: int,
    num_labels: int = 2,
    min_len: int | None = None,
    seed: int = 0,
) -> list[Batch]:
    """`count` BERT-style batches (B, seq): [CLS] w ... w [SEP], then pad; words drawn from range(*ids), lengths
    in [min_len (default seq // 2), seq]; with the tokenizer's attention_mask and a random label."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = lengths(g, batch, min_len or seq // 2, seq)
        src = torch.randint(*ids, (batch, seq), generator=g)
        src[:, 0] = cls
        src[torch.arange(batch), n - 1] = sep
        src = pad_after(src, n, pad)
        label = torch.randint(0, num_labels, (batch,), generator=g)
        out.append({"src": src, "attention_mask": src.ne(pad).long(), "label": label})
    return out


def translation_batches(
    count: int,
    batch: int,
    seq: int,
    ids: tuple[int, int],
    pad: int,
    eos: int,
    start: int,
    min_len: int | None = None,
    seed: int = 0,
    src_code: int | None = None,
    tgt_code: int | None = None,
) -> list[Batch]:
    """`count` Marian-style batches: src (B, seq) w ... w </s> then pad; tgt_out (B, seq) y ... y </s> then pad;
    tgt_in = tgt_out shifted right behind the decoder start, pad where tgt_out is pad (teacher forcing). With
    language codes (M2M100, NLLB, mBART-50), src is [src_code] w ... </s> and tgt_out [tgt_code] y ... </s>."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        rows = {}
        for side, code in (("src", src_code), ("tgt_out", tgt_code)):
            n = lengths(g, batch, min_len or seq // 2, seq)
            t = torch.randint(*ids, (batch, seq), generator=g)
            if code is not None:  # then </s> at n - 1: a row keeps both when n >= 2 (min_len)
                t[:, 0] = code
            t[torch.arange(batch), n - 1] = eos
            rows[side] = pad_after(t, n, pad)
        tgt_out = rows["tgt_out"]
        tgt_in = torch.cat([torch.full((batch, 1), start), tgt_out[:, :-1]], 1).masked_fill(tgt_out.eq(pad), pad)
        src = rows["src"]
        out.append({"src": src, "attention_mask": src.ne(pad).long(), "tgt_in": tgt_in, "tgt_out": tgt_out})
    return out


def hf_rows(generated: Tensor, eos: int) -> list[list[int]]:
    """HF `generate` output (B, 1 + n): the decoder start, then tokens -> each row's tokens before its first EOS
    (what prunelab's decoders return)."""
    out = []
    for row in generated[:, 1:].tolist():
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def real(t: Tensor, pad: int) -> int:
    return int(t.ne(pad).sum())


class Progress:
    """Elapsed seconds of each part, on stderr (the section runs for minutes)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def __call__(self, part: str) -> None:
        now = time.perf_counter()
        print(f"[bench]     {part}: {now - self.t:.0f} s", file=sys.stderr, flush=True)
        self.t = now


# --- timing ------------------------------------------------------------------------------------------------
def training_rate(loss: Callable[[Batch], Tensor], opt: torch.optim.Optimizer, batches: list[Batch], n: int) -> float:
    """Tokens/s of forward + backward + optimizer step over `batches` (n tokens in all)."""
    t = time.perf_counter()
    for b in batches:
        opt.zero_grad(set_to_none=True)
        loss(b).backward()
        opt.step()
    return n / (time.perf_counter() - t)


@torch.no_grad()
def inference_rate(forward: Callable[[Batch], Any], batches: list[Batch], n: int) -> float:
    t = time.perf_counter()
    for b in batches:
        forward(b)
    return n / (time.perf_counter() - t)


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    return run


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same optimizer for both sides (torch's AdamW with its default implementation)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)


def parameters(ours: torch.nn.Module, hf: torch.nn.Module) -> str:
    ours_n, hf_n = (sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (ours, hf))
    return f"trainable parameters {ours_n:,} vs {hf_n:,}"


def warm_train(loss: Callable[[Batch], Tensor], opt: torch.optim.Optimizer, b: Batch) -> None:
    """One untimed step: allocates the optimizer state and the first activations."""
    opt.zero_grad(set_to_none=True)
    loss(b).backward()
    opt.step()


Trainee = tuple[Callable[[Batch], Tensor], torch.optim.Optimizer]  # a side's loss and optimizer


def compare_training(
    ours: Trainee, hf: Trainee, batches: list[Batch], tokens: Callable[[Batch], int], reps: int, warmups: int = 1
) -> tuple[dict[str, list[float]], list[Batch], int]:
    """Both sides take `warmups` untimed steps on the first batch (in turn), then train on the rest, interleaved over
    `reps` repetitions: -> (tokens/s per side, the timed batches, their tokens). Models of hundreds of millions of
    parameters need 2: the step right after the other side's first step (which allocates gigabytes of AdamW state)
    runs seconds slower on 2 CPU cores, whichever side it is (measured on M2M100-418M: 13.5 s against 11 s)."""
    warm, timed = batches[0], batches[1:]
    for _ in range(warmups):
        warm_train(*ours, warm)
        warm_train(*hf, warm)
    n = sum(tokens(b) for b in timed)
    rates = interleave(
        {"prunelab": lambda: training_rate(*ours, timed, n), "hf": lambda: training_rate(*hf, timed, n)},
        reps,
        warmup=0,
    )
    return rates, timed, n


def save_and_import(hf: Any, load: Callable[[str], Any]) -> Any:
    """hf.save_pretrained to a temporary folder (without its progress bar), then prunelab's import from there."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            return load(d)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


# --- BERT-base ---------------------------------------------------------------------------------------------
def bert_base(
    train_steps: int,
    train_reps: int,
    infer_batches: int,
    infer_reps: int,
    train_batch: int = 8,
    infer_batch: int = 16,
    seq: int = 128,
    config_changes: dict[str, int] | None = None,
) -> list[Figure]:
    """BertForSequenceClassification with BertConfig's defaults (12 x 768, 12 heads, 3072, vocab 30522, dropout
    0.1 in the hidden states and attention; `config_changes` override them) and 2 labels, against its import by
    `load_hf_encoder`."""
    from transformers import BertConfig, BertForSequenceClassification

    from prunelab.hf.encoders import load_hf_encoder

    done = Progress()
    torch.manual_seed(0)
    config = BertConfig(num_labels=2, **(config_changes or {}))
    hf = BertForSequenceClassification(config)
    ours = save_and_import(hf, load_hf_encoder)
    done("BERT-base built, saved and imported")
    pad, words = config.pad_token_id, (1000, config.vocab_size)  # BERT's vocabulary: [unused]/specials below 1000
    train = classifier_batches(train_steps + 1, train_batch, seq, words, pad, cls=101, sep=102, seed=1)
    infer = classifier_batches(infer_batches, infer_batch, seq, words, pad, cls=101, sep=102, seed=2)

    def ours_logits(b: Batch) -> Tensor:
        return ours(b["src"])

    def hf_logits(b: Batch) -> Tensor:
        return hf(input_ids=b["src"], attention_mask=b["attention_mask"]).logits

    out: list[Figure] = []
    attn = hf.config._attn_implementation
    threads = torch.get_num_threads()

    # inference (eval mode, no_grad), the models still identical
    ours.eval()
    hf.eval()
    with torch.no_grad():
        probe = {k: v[:2] for k, v in infer[0].items()}
        diff = float((ours_logits(probe) - hf_logits(probe)).abs().max())
    n_inf = sum(real(b["src"], pad) for b in infer)
    inference_rate(ours_logits, infer[:1], 1)  # warm-up: one batch each
    inference_rate(hf_logits, infer[:1], 1)
    r = interleave(
        {
            "prunelab": lambda: inference_rate(ours_logits, infer, n_inf),
            "hf": lambda: inference_rate(hf_logits, infer, n_inf),
        },
        infer_reps,
        warmup=0,
    )
    pad_share = 1 - n_inf / sum(b["src"].numel() for b in infer)
    out.append(
        paired(
            SECTION,
            "BERT-base inference tok/s: prunelab / BertForSequenceClassification",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"eval, no_grad; {infer_batches} batch{'es' if infer_batches > 1 else ''} of {infer_batch} x {seq} "
                f"({100 * pad_share:.0f}% padding) "
                f"per rep, {infer_reps} reps after a warm-up batch; median {median(r['prunelab']):,.0f} vs "
                f"{median(r['hf']):,.0f} real tok/s; HF attention {attn}, fp32, {threads} threads; "
                f"max |logit diff| {diff:.1e}"
            ),
        )
    )
    done("BERT-base inference")

    # training (train mode: dropout 0.1 on both sides; AdamW; cross-entropy from each side's logits)
    ours.train()
    hf.train()
    opt_ours, opt_hf = adamw(ours), adamw(hf)

    def ours_loss(b: Batch) -> Tensor:
        return F.cross_entropy(ours_logits(b), b["label"])

    def hf_loss(b: Batch) -> Tensor:
        return F.cross_entropy(hf_logits(b), b["label"])

    r, timed_batches, n_tr = compare_training(
        (ours_loss, opt_ours), (hf_loss, opt_hf), train, lambda b: real(b["src"], pad), train_reps
    )
    pad_share = 1 - n_tr / sum(b["src"].numel() for b in timed_batches)
    out.append(
        paired(
            SECTION,
            "BERT-base training tok/s: prunelab / BertForSequenceClassification",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"train mode (dropout 0.1), forward + backward + AdamW; {train_steps} steps of {train_batch} x {seq} "
                f"({100 * pad_share:.0f}% padding) per rep, {train_reps} reps after a warm-up step; median "
                f"{median(r['prunelab']):,.0f} vs {median(r['hf']):,.0f} real tok/s; HF attention {attn}; "
                f"{parameters(ours, hf)}"
            ),
        )
    )
    done("BERT-base training")
    return out


# --- MarianMT, opus-mt-en-de shape -------------------------------------------------------------------------
V, PAD, EOS = 58101, 58100, 0  # opus-mt-en-de: </s> = 0, <pad> = V - 1, the decoder starts from pad


def marian_base(
    train_steps: int,
    train_reps: int,
    gen_reps: int,
    train_batch: int = 16,
    seq: int = 48,
    gen_batch: int = 16,
    src_len: int = 32,
    new_tokens: int = 32,
    config_changes: dict[str, int] | None = None,
) -> list[Figure]:
    """MarianMTModel shaped like opus-mt-en-de (512, 6 + 6 layers, 8 heads, 2048, vocab 58101, swish), against its
    import by `load_hf_marian`: training, then greedy and beam-4 generation of `new_tokens` tokens per sentence.
    `config_changes` override the MarianConfig's sizes (the vocabulary stays)."""
    from transformers import MarianConfig, MarianMTModel

    from prunelab.hf.marian import load_hf_marian
    from prunelab.models.decoding import beam_search, greedy_decode, hf_beam_search

    done = Progress()
    torch.manual_seed(0)
    config = MarianConfig(
        vocab_size=V,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        activation_function="swish",
        max_position_embeddings=512,
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
        forced_eos_token_id=EOS,
        scale_embedding=True,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    for key, value in (config_changes or {}).items():
        setattr(config, key, value)
    hf = MarianMTModel(config).eval()
    # Random weights would end sentences at chance: </s> gets a logit bias of -1e4 in the saved file (and so on both
    # sides), so that every sentence is decoded to the length limit, where both force </s>: the same work each run.
    with torch.no_grad():
        hf.final_logits_bias[0, EOS] = -1.0e4
    ours = save_and_import(hf, load_hf_marian).eval()
    done("Marian-base built, saved and imported")
    words = (1, PAD)  # neither </s> nor pad
    attn = hf.config._attn_implementation
    threads = torch.get_num_threads()
    out: list[Figure] = []

    # generation (eval mode, no_grad): identical models, the same sources
    src = translation_batches(1, gen_batch, src_len, words, PAD, EOS, PAD, seed=3)[0]["src"]
    mask = src.ne(PAD).long()
    with torch.no_grad():
        probe = translation_batches(1, 2, 16, words, PAD, EOS, PAD, seed=4)[0]
        want = hf(input_ids=probe["src"], attention_mask=probe["attention_mask"], decoder_input_ids=probe["tgt_in"])
        # the </s> column (-1e4 + x) is left out: at that magnitude fp32 resolves only ~1e-3
        gap = (ours(probe["src"], probe["tgt_in"]) - want.logits).abs()
        gap[..., EOS] = 0.0
        diff = float(gap.max())

    def generate(beams: int) -> list[list[int]]:
        beam_kw = {"length_penalty": 1.0, "early_stopping": False} if beams > 1 else {}
        generated = hf.generate(
            input_ids=src,
            attention_mask=mask,
            do_sample=False,
            num_beams=beams,
            max_new_tokens=new_tokens,
            bad_words_ids=[[PAD]],
            forced_eos_token_id=EOS,
            **beam_kw,
        )
        return hf_rows(generated, EOS)

    kinds: dict[str, dict[str, Callable[[], list[list[int]]]]] = {
        "greedy": {
            "prunelab": lambda: greedy_decode(ours, src, bos_id=PAD, eos_id=EOS, max_len_a=0.0, max_len_b=new_tokens),
            "hf": lambda: generate(1),
        },
        "beam 4": {
            "prunelab": lambda: hf_beam_search(
                ours, src, bos_id=PAD, eos_id=EOS, beam_size=4, length_penalty=1.0, max_new_tokens=new_tokens
            ),
            "hf": lambda: generate(4),
            # prunelab's own beam search (GNMT length penalty 0.6, finished hypotheses keep their slot): not HF's
            # algorithm, so no goal; here it too decodes every sentence to the limit
            "own": lambda: beam_search(
                ours, src, bos_id=PAD, eos_id=EOS, beam_size=4, max_len_a=0.0, max_len_b=new_tokens
            ),
        },
    }
    n_gen = gen_batch * new_tokens  # </s> included: every sentence runs to the limit (checked below)
    with torch.no_grad():
        for kind, contenders in kinds.items():
            outputs = {name: fn() for name, fn in contenders.items()}  # the warm-up run, kept to compare
            same = outputs["prunelab"] == outputs["hf"]
            full = all(len(row) == new_tokens - 1 for rows in outputs.values() for row in rows)
            r = interleave({name: timed(fn) for name, fn in contenders.items()}, gen_reps, warmup=0)
            note = (
                f"batch {gen_batch}, sources of {src_len // 2}-{src_len} tokens, {new_tokens} tokens each (</s> "
                f"forced at the limit{'' if full else '; NOT every sentence reached it'}), {gen_reps} reps; "
                f"median {n_gen / median(r['prunelab']):,.0f} vs {n_gen / median(r['hf']):,.0f} tok/s; "
                f"same tokens as generate: {'yes' if same else 'NO'}; bad_words_ids=[[pad]]"
            )
            if kind == "greedy":
                note += f"; HF attention {attn}, fp32, {threads} threads; max |logit diff| {diff:.1e}"
            else:
                note += "; prunelab: decoding.hf_beam_search (HF's algorithm, length_penalty 1, early_stopping False)"
            out.append(
                paired(
                    SECTION,
                    f"Marian-base generation tok/s, {kind}: prunelab / MarianMT.generate",
                    r["hf"],
                    r["prunelab"],
                    goal=1.0,
                    note=note,
                )
            )
            if "own" in r:
                out.append(
                    paired(
                        SECTION,
                        "Marian-base generation tok/s, beam 4: prunelab's beam_search / MarianMT.generate",
                        r["hf"],
                        r["own"],
                        note="prunelab's own beam search (GNMT length penalty 0.6), same sources and length",
                    )
                )
            done(f"Marian-base generation, {kind}")

    # training (train mode: dropout 0.1, none in attention or the feed-forward, as the config; teacher forcing)
    with torch.no_grad():  # back to a plain random model: targets end with </s>
        hf.final_logits_bias.zero_()
        ours.logit_bias.zero_()
    ours.train()
    hf.train()
    train = translation_batches(train_steps + 1, train_batch, seq, words, PAD, EOS, PAD, seed=5)
    opt_ours, opt_hf = adamw(ours), adamw(hf)

    ours_loss, hf_loss = translation_losses(ours, hf, PAD)
    r, _, _ = compare_training(
        (ours_loss, opt_ours), (hf_loss, opt_hf), train, lambda b: real(b["tgt_out"], PAD), train_reps
    )
    out.insert(
        0,
        paired(
            SECTION,
            "Marian-base training tok/s: prunelab / MarianMTModel",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"train mode (dropout 0.1), teacher-forced cross-entropy, forward + backward + AdamW; {train_steps} "
                f"steps of {train_batch} x {seq} + {seq} tokens per rep, {train_reps} reps after a warm-up step; "
                f"median {median(r['prunelab']):,.0f} vs {median(r['hf']):,.0f} target tok/s; {parameters(ours, hf)}"
            ),
        ),
    )
    done("Marian-base training")
    return out


# --- T5-base and M2M100-418M shapes ------------------------------------------------------------------------
def seq2seq_rows(
    label: str,
    hf: Any,
    load: Callable[[str], Any],
    words: tuple[int, int],
    train_steps: int,
    train_reps: int,
    gen_reps: int,
    train_batch: int,
    seq: int,
    gen_batch: int,
    src_len: int,
    new_tokens: int,
    codes: tuple[int | None, int | None] = (None, None),
    train_note: str = "",
) -> list[Figure]:
    """An encoder-decoder `hf` (random weights, its real checkpoint's generation_config.json set on it) against its
    import by `load` (a family importer): beam-4 generation with the checkpoint's settings, then training.

    Generation: prunelab's `prunelab.hf.generation.generate` with `checkpoint_generation(model.generation, ...)`
    against `hf.generate(num_beams=4, ...)`, both with the same overrides: at most `new_tokens` tokens and, so that
    random weights do not end sentences at chance, </s> banned before the last one (min_new_tokens): every sentence
    runs to the limit, the same work each run. `codes` = (source, target) language codes: the source is prefixed,
    the target code forced as the first generated token (forced_bos_token_id), as one translates with M2M100."""
    from prunelab.hf.generation import checkpoint_generation, generate

    done = Progress()
    c = hf.config
    pad, eos, start = c.pad_token_id, c.eos_token_id, c.decoder_start_token_id
    src_code, tgt_code = codes
    hf.eval()
    ours = save_and_import(hf, load).eval()
    done(f"{label} built, saved and imported")
    attn = c._attn_implementation
    threads = torch.get_num_threads()

    def batches(count: int, batch: int, length: int, seed: int) -> list[Batch]:
        return translation_batches(
            count, batch, length, words, pad, eos, start, seed=seed, src_code=src_code, tgt_code=tgt_code
        )

    # generation (eval mode, no_grad): identical models, the same sources
    src = batches(1, gen_batch, src_len, seed=3)[0]["src"]
    mask = src.ne(pad).long()
    with torch.no_grad():
        probe = batches(1, 2, 16, seed=4)[0]
        want = hf(input_ids=probe["src"], attention_mask=probe["attention_mask"], decoder_input_ids=probe["tgt_in"])
        diff = float((ours(probe["src"], probe["tgt_in"]) - want.logits).abs().max())
    limits = {"num_beams": 4, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens - 1}
    if tgt_code is not None:
        limits["forced_bos_token_id"] = tgt_code
    g = checkpoint_generation(ours.generation, limits)
    contenders: dict[str, Callable[[], list[list[int]]]] = {
        "prunelab": lambda: generate(ours, src, g),
        "hf": lambda: hf_rows(hf.generate(input_ids=src, attention_mask=mask, **limits), eos),
    }
    n_gen = gen_batch * new_tokens  # every sentence runs to the limit (checked below)
    with torch.no_grad():
        outputs = {name: fn() for name, fn in contenders.items()}  # the warm-up run, kept to compare
        same = outputs["prunelab"] == outputs["hf"]
        full = all(len(row) >= new_tokens - 1 for rows in outputs.values() for row in rows)
        r = interleave({name: timed(fn) for name, fn in contenders.items()}, gen_reps, warmup=0)
    settings = ", ".join(f"{k} {v}" for k, v in ours.generation.items() if k != "source")
    out = [
        paired(
            SECTION,
            f"{label} generation tok/s, beam 4: prunelab / generate",
            r["hf"],
            r["prunelab"],
            goal=1.0,
            note=(
                f"batch {gen_batch}, sources of {src_len // 2}-{src_len} tokens, {new_tokens} tokens each (</s> "
                f"banned before the last{'' if full else '; NOT every sentence reached it'}), {gen_reps} reps; "
                f"median {n_gen / median(r['prunelab']):,.0f} vs {n_gen / median(r['hf']):,.0f} tok/s; "
                f"same tokens as generate: {'yes' if same else 'NO'}; the checkpoint's generation_config ({settings}) "
                f"with num_beams 4, max_new_tokens {new_tokens}, min_new_tokens {new_tokens - 1}"
                f"{f', forced_bos_token_id {tgt_code}' if tgt_code is not None else ''}; prunelab: "
                f"hf.generation.generate; HF attention {attn}, fp32, {threads} threads; max |logit diff| {diff:.1e}"
            ),
        )
    ]
    done(f"{label} generation, beam 4")

    # training (train mode, the checkpoint's dropout; teacher-forced cross-entropy from each side's logits)
    ours.train()
    hf.train()
    train = batches(train_steps + 1, train_batch, seq, seed=5)
    opt_ours, opt_hf = adamw(ours), adamw(hf)

    ours_loss, hf_loss = translation_losses(ours, hf, pad)
    r, _, _ = compare_training(
        (ours_loss, opt_ours), (hf_loss, opt_hf), train, lambda b: real(b["tgt_out"], pad), train_reps, warmups=2
    )
    out.insert(
        0,
        paired(
            SECTION,
            f"{label} training tok/s: prunelab / transformers",
            r["prunelab"],
            r["hf"],
            goal=1.0,
            note=(
                f"train mode ({train_note}), teacher-forced cross-entropy, forward + backward + AdamW; {train_steps} "
                f"step{'s' if train_steps > 1 else ''} of {train_batch} x {seq} + {seq} tokens per rep, {train_reps} "
                "reps after 2 warm-up steps each, in turn; "
                f"median {median(r['prunelab']):,.0f} vs {median(r['hf']):,.0f} target tok/s; {parameters(ours, hf)}"
            ),
        ),
    )
    done(f"{label} training")
    return out


def translation_losses(ours: Any, hf: Any, pad: int) -> tuple[Callable[[Batch], Tensor], Callable[[Batch], Tensor]]:
    """The teacher-forced cross-entropy of a batch from each side's logits: (prunelab's, transformers')."""

    def ours_loss(b: Batch) -> Tensor:
        logits = ours(b["src"], b["tgt_in"])
        return F.cross_entropy(logits.flatten(0, 1), b["tgt_out"].flatten(), ignore_index=pad)

    def hf_loss(b: Batch) -> Tensor:
        logits = hf(
            input_ids=b["src"], attention_mask=b["attention_mask"], decoder_input_ids=b["tgt_in"], use_cache=False
        ).logits
        return F.cross_entropy(logits.flatten(0, 1), b["tgt_out"].flatten(), ignore_index=pad)

    return ours_loss, hf_loss


def layers_named(label: str, layers: int, full: int) -> str:
    """The row's model name, with its depth when it is not the checkpoint's (quick runs may cut it)."""
    return label if layers == full else f"{label} ({layers}+{layers} layers)"


def t5_base(
    train_steps: int,
    train_reps: int,
    gen_reps: int,
    train_batch: int = 8,
    seq: int = 32,
    gen_batch: int = 8,
    src_len: int = 24,
    new_tokens: int = 16,
    layers: int = 12,
    config_changes: dict[str, int] | None = None,
) -> list[Figure]:
    """T5ForConditionalGeneration shaped like t5-base (T5 v1.0: 768, 12 + 12 layers, 12 heads of 64, ReLU 3072,
    vocab 32128, 32 relative buckets up to 128, tied output rescaled by 768^-0.5, dropout 0.1) with t5-base's
    generation_config.json (decoder start = pad 0, </s> 1), against its import by `load_hf_t5`. `layers` per stack
    (the row says so when not 12); `config_changes` override the T5Config's sizes."""
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    from prunelab.hf.t5 import load_hf_t5

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    for key, value in (config_changes or {}).items():
        setattr(config, key, value)
    hf = T5ForConditionalGeneration(config)
    hf.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    return seq2seq_rows(
        layers_named("T5-base", layers, 12),
        hf,
        load_hf_t5,
        words=(3, 32100),  # not pad, </s>, <unk>, nor the 100 sentinels <extra_id_N> (and the 28 unused rows)
        train_steps=train_steps,
        train_reps=train_reps,
        gen_reps=gen_reps,
        train_batch=train_batch,
        seq=seq,
        gen_batch=gen_batch,
        src_len=src_len,
        new_tokens=new_tokens,
        train_note="dropout 0.1 in the residuals, attention and feed-forward",
    )


M2M_EN, M2M_DE = 128022, 128020  # m2m100_418M's __en__ and __de__ (after the 128004 pieces and specials)


def m2m100_418m(
    train_steps: int,
    train_reps: int,
    gen_reps: int,
    train_batch: int = 8,
    seq: int = 32,
    gen_batch: int = 8,
    src_len: int = 24,
    new_tokens: int = 16,
    layers: int = 12,
    config_changes: dict[str, int] | None = None,
) -> list[Figure]:
    """M2M100ForConditionalGeneration shaped like facebook/m2m100_418M (1024, 12 + 12 layers, 16 heads, ReLU 4096,
    vocab 128112, 1024 sinusoidal positions, scale_embedding, dropout 0.1 and 0.1 in attention) with its
    generation_config.json (5 beams, early stopping, at most 200 tokens; decoder start </s> 2), translating
    __en__ -> __de__, against its import by `load_hf_m2m100`. LayerDrop (0.05 in the checkpoint) is off: it skips
    layers at random in training, so the two sides would not do the same work. `layers` per stack (the row says so
    when not 12); `config_changes` override the M2M100Config's sizes."""
    from transformers import GenerationConfig, M2M100Config, M2M100ForConditionalGeneration

    from prunelab.hf.m2m100 import load_hf_m2m100

    torch.manual_seed(0)
    ids = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2}
    config = M2M100Config(
        vocab_size=128112,
        d_model=1024,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        activation_function="relu",
        max_position_embeddings=1024,
        scale_embedding=True,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        **ids,
    )
    for key, value in (config_changes or {}).items():
        setattr(config, key, value)
    hf = M2M100ForConditionalGeneration(config)
    hf.generation_config = GenerationConfig(num_beams=5, early_stopping=True, max_length=200, **ids)
    return seq2seq_rows(
        layers_named("M2M100-418M", layers, 12),
        hf,
        load_hf_m2m100,
        words=(4, 128004),  # the pieces: not <s>, <pad>, </s>, <unk>, nor the language codes and made-up words
        train_steps=train_steps,
        train_reps=train_reps,
        gen_reps=gen_reps,
        train_batch=train_batch,
        seq=seq,
        gen_batch=gen_batch,
        src_len=src_len,
        new_tokens=new_tokens,
        codes=(M2M_EN, M2M_DE),
        train_note="dropout 0.1 in the residuals and attention, LayerDrop off",
    )
