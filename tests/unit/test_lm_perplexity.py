"""The language-modeling task's perplexity (prunelab.tasks.language_modeling) through Lightning's test loop, against
independent computations: Hugging Face's strided perplexity loop ("Perplexity of fixed-length models") run by
transformers itself on a tiny Llama (grouped-query attention, a non-default rope_theta) imported into prunelab, and
exact rational sums of planted NLLs that a float32 sum gets wrong (the task and the importance studies' scorer)."""

from __future__ import annotations

import math
import random
from fractions import Fraction
from functools import partial
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from prunelab.data.windows import IGNORE, collate_lm, windows
from prunelab.models.causal_lm import CausalLM, build_causal_lm
from prunelab.pruning import NoPruner
from prunelab.scoring.scoring import PerplexityScorer
from prunelab.tasks import LanguageModelingTask
from tests.tiny import hf_llama_config

V = 101
SEQ_LEN, STRIDE = 24, 10


def task_test_scores(model: CausalLM, examples: list[Any], batch_size: int, collate: Any) -> dict[str, Any]:
    """The task's test/ppl, test/nll and token count from Lightning's test loop over `examples`."""
    task = LanguageModelingTask(model, NoPruner(), tokenizer=None)  # type: ignore[arg-type]  # scoring reads none
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(task, dataloaders=DataLoader(examples, batch_size=batch_size, collate_fn=collate), verbose=False)
    return task.last_eval["test"]["scores"]


# --- the strided protocol against Hugging Face's loop ----------------------------------------------------------------
@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, CausalLM]:
    """A tiny random Llama (GQA, untied head, rope_theta=37: every position's rotation far from the default's), saved
    with save_pretrained and imported with load_hf_causal_lm -> (the transformers model, prunelab's)."""
    transformers = pytest.importorskip("transformers")
    from prunelab.hf.causal_lm import load_hf_causal_lm

    torch.manual_seed(0)
    config = hf_llama_config(vocab_size=V, rope_theta=37.0)
    hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in hf.parameters():  # off the initial values: norms and all
            p.add_(torch.randn_like(p) * 0.1)
    hf.eval()
    folder = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(folder)
    ours = load_hf_causal_lm(folder)
    assert ours.cfg.rope_theta == 37.0
    return hf, ours.eval()


def hf_strided_perplexity(model: Any, ids: torch.Tensor, max_length: int, stride: int) -> tuple[float, int]:
    """Hugging Face's "Perplexity of fixed-length models" loop, run by transformers: windows of max_length tokens
    every `stride`, the labels of the context part (the tokens the previous window scored) set to -100, the model's
    own mean loss weighted by the number of target tokens it averaged over (the labels after its internal shift that
    are not -100; the recipe's `num_valid_tokens - batch_size` is that count for the first window only).
    -> (perplexity, target tokens)."""
    seq_len = ids.size(1)
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        n = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * n
        n_tokens += n
        prev_end = end
        if end == seq_len:
            break
    return math.exp(nll_sum / n_tokens), n_tokens


@pytest.mark.parametrize("n", [150, 157])  # the last window full, or short (padded in its batch)
def test_strided_perplexity_is_hugging_faces_loop(llama: tuple[Any, CausalLM], n: int) -> None:
    """The task's test perplexity over strided windows (data.stride) equals Hugging Face's strided loop by
    transformers on the same stream: every token after the first scored once, from its window's context; a
    perplexity that divides by every input token of a window (context included) or drops the rotary settings fails."""
    hf, ours = llama
    rng = random.Random(n)
    stream = [rng.randrange(V) for _ in range(n)]
    want, want_tokens = hf_strided_perplexity(hf, torch.tensor([stream]), SEQ_LEN, STRIDE)
    assert want_tokens == n - 1
    ws = windows(stream, SEQ_LEN, STRIDE)
    assert len(ws) > 5 and any(w.score_from > 1 for w in ws)  # most windows have context that is not scored
    scores = task_test_scores(ours, ws, batch_size=4, collate=partial(collate_lm, pad_id=0))
    assert scores["tokens"] == want_tokens and scores["windows"] == len(ws)
    assert scores["ppl"] == pytest.approx(want, rel=1e-5)


# --- a window's NLL summed exactly -----------------------------------------------------------------------------------
T = 2048  # targets a window


def planted_nll(rows: int) -> torch.Tensor:
    """Per-token NLLs (rows, T) in float32 as the model computes them: each window's first target very unlikely
    (NLL 16384.5), the others nearly certain (NLLs around 1e-4), the last 100 targets of odd rows padding (NLL 0).
    A float32 sum of a row loses the small ones against the large one (its spacing there is 2^-9)."""
    g = torch.Generator().manual_seed(0)
    nll = torch.rand(rows, T, generator=g, dtype=torch.float64).mul(2e-4).float()
    nll[:, 0] = 16384.5
    nll[1::2, -100:] = 0.0
    return nll


def planted_batches(nll: torch.Tensor, batch_size: int) -> list[dict[str, Any]]:
    """Batches of the windows whose targets the planted NLLs belong to: IGNORE on the padding."""
    out = []
    for k in range(0, nll.size(0), batch_size):
        rows = torch.arange(k, min(k + batch_size, nll.size(0)))
        target = torch.ones(len(rows), T, dtype=torch.long)
        target[(rows % 2 == 1), -100:] = IGNORE
        real = target != IGNORE
        out.append(
            {
                "src": torch.ones(len(rows), T, dtype=torch.long),
                "target": target,
                "real": real,
                "n_tokens": int(real.sum()),
                "idx": rows,
                "ref": [""] * len(rows),
            }
        )
    return out


def planted_model(nll: torch.Tensor) -> CausalLM:
    """A tiny CausalLM whose token_nll gives the planted NLLs of a batch's windows (found by their index)."""
    model = build_causal_lm(vocab_size=8, d_model=8, n_heads=2, d_ff=16, dec_layers=1, dropout=0.0)
    model.token_nll = lambda batch: nll[batch["idx"]]  # type: ignore[method-assign]
    return model


def exact_mean(nll: torch.Tensor, scored: torch.Tensor) -> Fraction:
    """The mean of the planted float32 NLLs over the scored targets, in exact rational arithmetic."""
    values = nll[scored].tolist()  # float32 -> Python floats: exact
    return sum((Fraction(v) for v in values), Fraction(0)) / len(values)


def test_a_windows_nll_is_summed_exactly() -> None:
    """The task's test/nll and test/ppl, and the studies' PerplexityScorer, are the exact mean of the per-token NLLs
    (to float64 rounding), which a float32 sum of a window's NLLs misses: the planted NLLs lose ~2e-1 per window in
    such a sum (the self-check below), 1e-4 of the mean NLL, far beyond the 1e-12 asked."""
    nll = planted_nll(6)
    batches = planted_batches(nll, batch_size=4)
    scored = torch.cat([b["target"] for b in batches]) != IGNORE
    exact = exact_mean(nll, scored)
    # the planting makes the point: a float32 sum of each window is wrong in the 5th digit of the mean
    float32_sum = sum(float(row[keep].sum()) for row, keep in zip(nll, scored, strict=True))
    assert abs(Fraction(float32_sum) / int(scored.sum()) - exact) > 1e-9 * exact

    scores = task_test_scores(planted_model(nll), batches, batch_size=1, collate=lambda b: b[0])
    assert scores["tokens"] == int(scored.sum())
    assert math.isclose(scores["nll"], float(exact), rel_tol=1e-12, abs_tol=0.0)
    assert math.isclose(scores["ppl"], math.exp(float(exact)), rel_tol=1e-12, abs_tol=0.0)

    negated = PerplexityScorer().score(planted_model(nll), batches)
    assert math.isclose(-negated, math.exp(float(exact)), rel_tol=1e-12, abs_tol=0.0)
