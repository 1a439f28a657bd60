"""Generation for a decoder-only language model (prunelab.models.lm_generation) against transformers' `generate` on
tiny random GPT-2 and Llama (grouped-query attention, untied head) checkpoints built here and imported with
load_hf_causal_lm; against uncached argmax decoding; and sampling against the distribution it should draw from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from prunelab.hf.causal_lm import load_hf_causal_lm  # noqa: E402
from prunelab.models.causal_lm import CausalLM  # noqa: E402
from prunelab.models.lm_generation import generate_lm, warp_logits  # noqa: E402

V = 64
MAX_LEN = 48


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, CausalLM]]:
    """{family: (the HF model, its prunelab import)}; weights at std 0.2 so that logits are well apart."""
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=V, n_positions=MAX_LEN, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2
        )
    ).eval()
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention
            max_position_embeddings=MAX_LEN,
            tie_word_embeddings=False,
            initializer_range=0.2,
        )
    ).eval()
    out = {}
    for name, hf in (("gpt2", gpt2), ("llama", llama)):
        hf.generation_config.eos_token_id = None  # run every step unless a test gives an eos
        hf.generation_config.pad_token_id = 0
        ours = load_hf_causal_lm(_save(hf, tmp_path_factory.mktemp(name))).eval()
        out[name] = (hf, ours)
    assert out["llama"][1].cfg.kv_heads == 2 and not out["llama"][1].cfg.tie_embeddings
    return out


def hf_generate(hf, prompt: list[int], n: int, **kwargs) -> list[int]:
    """transformers' new tokens for one prompt (a batch of one: no padding involved)."""
    ids = torch.tensor([prompt])
    seq = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, **kwargs)
    return seq[0, len(prompt) :].tolist()


def uncached_greedy(model: CausalLM, prompt: list[int], n: int, eos: int | None = None) -> list[int]:
    """The argmax continuation, the whole sequence run again at every step (no cache)."""
    seq, new = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([seq]))[0, -1].argmax())
            seq.append(t)
            new.append(t)
            if t == eos:
                break
    return new


PROMPTS = [[5, 9, 13, 2], [40, 41], [7], [3, 3, 8, 60, 22, 17, 30], [11, 12, 13]]  # lengths 4, 2, 1, 7, 3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_equals_transformers_generate(checkpoints, family: str) -> None:
    hf, ours = checkpoints[family]
    prompts = torch.randint(0, V, (3, 6), generator=torch.Generator().manual_seed(1))
    ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=15)
    assert generate_lm(ours, prompts, 15) == ref[:, 6:].tolist()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prompts_of_different_lengths_in_one_batch(checkpoints, family: str) -> None:
    """Each row as transformers generates it alone, and as uncached argmax decoding gives it: an off-by-one in
    the positions where rows leave their prompts, or in the cache, changes the tokens."""
    hf, ours = checkpoints[family]
    got = generate_lm(ours, PROMPTS, 12)
    assert got == [hf_generate(hf, p, 12, do_sample=False) for p in PROMPTS]
    assert got == [uncached_greedy(ours, p, 12) for p in PROMPTS]
    assert all(len(g) == 12 for g in got)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rows_stop_at_eos_as_transformers(checkpoints, family: str) -> None:
    """A row ends with its eos (kept), the others go on: the batch shrinks and the cache with it."""
    hf, ours = checkpoints[family]
    free = generate_lm(ours, PROMPTS, 12)
    eos = free[0][3]  # the 4th token of the first row: it stops there (or earlier)
    got = generate_lm(ours, PROMPTS, 12, eos_id=eos)
    assert got == [hf_generate(hf, p, 12, do_sample=False, eos_token_id=eos) for p in PROMPTS]
    assert got == [uncached_greedy(ours, p, 12, eos) for p in PROMPTS]
    assert got[0][-1] == eos and len(got[0]) <= 4
    assert any(len(g) == 12 and eos not in g for g in got)  # some row ran to the end
    # several ids: a row stops at whichever comes first
    both = generate_lm(ours, PROMPTS, 12, eos_id=[eos, free[1][2]])
    assert both[1][-1] in (eos, free[1][2]) and len(both[1]) <= 3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sampling_equals_transformers_with_the_same_seed(checkpoints, family: str) -> None:
    """Temperature, then top-k, then top-p, then one multinomial draw over the batch: with the same global seed,
    transformers' sampled tokens exactly (another order of the warpers, or another draw, changes them)."""
    hf, ours = checkpoints[family]
    prompts = torch.randint(0, V, (4, 5), generator=torch.Generator().manual_seed(2))
    for kwargs in ({"temperature": 0.7, "top_k": 20, "top_p": 0.9}, {"temperature": 1.5, "top_k": 0, "top_p": 0.5}):
        torch.manual_seed(7)
        ref = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, max_new_tokens=10, **kwargs)
        torch.manual_seed(7)
        got = generate_lm(ours, prompts, 10, do_sample=True, **kwargs)
        assert got == ref[:, 5:].tolist(), kwargs


def test_top_k_1_is_greedy(checkpoints) -> None:
    _, ours = checkpoints["llama"]
    g = torch.Generator().manual_seed(0)
    sampled = generate_lm(ours, PROMPTS, 10, do_sample=True, temperature=3.0, top_k=1, generator=g)
    assert sampled == generate_lm(ours, PROMPTS, 10)


def test_seeded_generator_repeats(checkpoints) -> None:
    _, ours = checkpoints["gpt2"]
    a = generate_lm(ours, PROMPTS, 8, do_sample=True, generator=torch.Generator().manual_seed(5))
    b = generate_lm(ours, PROMPTS, 8, do_sample=True, generator=torch.Generator().manual_seed(5))
    c = generate_lm(ours, PROMPTS, 8, do_sample=True, generator=torch.Generator().manual_seed(6))
    assert a == b and a != c


N_DRAWS = 20000


def first_draws(model: CausalLM, prompt: list[int], seed: int, **kwargs) -> torch.Tensor:
    """N_DRAWS independent first tokens (the prompt repeated in one batch) -> counts per token (V,)."""
    prompts = torch.tensor([prompt]).expand(N_DRAWS, -1)
    got = generate_lm(model, prompts, 1, do_sample=True, generator=torch.Generator().manual_seed(seed), **kwargs)
    return torch.bincount(torch.tensor([g[0] for g in got]), minlength=V).double()


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the tokens expected >= 5 times, the others pooled; (statistic, degrees of freedom)."""
    expected = probs.double() * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    nz = exp > 0
    return float(((obs[nz] - exp[nz]) ** 2 / exp[nz]).sum()), int(nz.sum()) - 1


def bound(df: int) -> float:
    return df + 6 * (2 * df) ** 0.5  # far in the tail of chi-square(df): a correct sampler stays below


def next_logits(model: CausalLM, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt]))[0, -1].double()


def test_first_token_follows_softmax_over_temperature(checkpoints) -> None:
    _, ours = checkpoints["llama"]
    prompt = [4, 8, 15]
    logits = next_logits(ours, prompt)
    counts = first_draws(ours, prompt, seed=0, temperature=2.0)
    stat, df = chi2(counts, (logits / 2.0).softmax(-1))
    assert stat < bound(df)
    # the test tells temperatures apart: the same draws against the untempered or the inverted distribution fail
    for wrong in (logits.softmax(-1), (logits * 2.0).softmax(-1)):
        assert chi2(counts, wrong)[0] > 10 * bound(df)


def test_top_p_draws_only_from_the_nucleus(checkpoints) -> None:
    _, ours = checkpoints["llama"]
    prompt = [4, 8, 15]
    probs = (next_logits(ours, prompt) / 1.5).softmax(-1)
    top_p = 0.6
    p_sorted, order = probs.sort(descending=True)
    size = int((p_sorted.cumsum(0) < top_p).sum()) + 1  # the fewest best tokens holding at least top_p
    nucleus = order[:size]
    assert 3 <= size < V - 10, size  # a real cut (the test would prove nothing otherwise)
    counts = first_draws(ours, prompt, seed=1, temperature=1.5, top_p=top_p)
    outside = torch.ones(V, dtype=torch.bool)
    outside[nucleus] = False
    assert counts[outside].sum() == 0
    assert (counts[nucleus] > 0).all()
    renormed = torch.zeros(V, dtype=torch.float64)
    renormed[nucleus] = probs[nucleus] / probs[nucleus].sum()
    stat, df = chi2(counts, renormed)
    assert stat < bound(df)


def test_top_k_draws_from_the_k_best(checkpoints) -> None:
    _, ours = checkpoints["gpt2"]
    prompt = [9, 1, 33, 2]
    probs = next_logits(ours, prompt).softmax(-1)
    best = probs.topk(5).indices
    counts = first_draws(ours, prompt, seed=2, top_k=5)
    assert counts.sum() == counts[best].sum() and (counts[best] > 0).all()
    renormed = torch.zeros(V, dtype=torch.float64)
    renormed[best] = probs[best] / probs[best].sum()
    assert chi2(counts, renormed)[0] < bound(chi2(counts, renormed)[1])


def test_temperature_comes_before_top_p() -> None:
    """logits (2, 1, 0): untempered, top_p=0.8 keeps two tokens (0.665 + 0.245); at temperature 0.5 the first
    alone holds 0.867, so only it stays. Top-k then top-p: k=2 of four, then top_p on the two left."""
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.isfinite(warp_logits(logits, 1.0, None, 0.8)).tolist() == [[True, True, False]]
    assert torch.isfinite(warp_logits(logits, 0.5, None, 0.8)).tolist() == [[True, False, False]]
    four = torch.tensor([[3.0, 2.9, 0.0, 2.95]])  # top-2 = tokens 0 and 3, renormalised they are ~0.51 / 0.49
    kept = torch.isfinite(warp_logits(four, 1.0, 2, 0.5)).tolist()
    assert kept == [[True, False, False, False]]  # top_p over all four would keep token 0 and 3 (0.34 + 0.33 < 0.5)
    assert torch.isfinite(warp_logits(four, 1.0, None, 0.5)).tolist() == [[True, False, False, True]]


def test_stop_callback_and_the_last_position(checkpoints) -> None:
    _, ours = checkpoints["gpt2"]
    free = generate_lm(ours, PROMPTS, 10)
    got = generate_lm(ours, PROMPTS, 10, stop=lambda new: len(new) >= 3 and new[0] == free[1][0])
    assert got[1] == free[1][:3] and all(g == f for i, (g, f) in enumerate(zip(got, free, strict=True)) if i != 1)
    # a prompt two short of max_len: tokens at positions max_len-2, max_len-1 and max_len, then no position left
    long = [5] * (MAX_LEN - 2)
    assert len(generate_lm(ours, [long, [1, 2]], 10)[0]) == 3
    assert generate_lm(ours, [long], 10)[0] == uncached_greedy(ours, long, 3)


def test_bad_inputs(checkpoints) -> None:
    _, ours = checkpoints["gpt2"]
    assert generate_lm(ours, PROMPTS, 0) == [[] for _ in PROMPTS]
    assert generate_lm(ours, [], 5) == []
    with pytest.raises(ValueError, match="at least one token"):
        generate_lm(ours, [[1, 2], []], 5)
    with pytest.raises(ValueError, match="max_len"):
        generate_lm(ours, [[1] * (MAX_LEN + 1)], 5)
    with pytest.raises(ValueError, match="temperature"):
        generate_lm(ours, PROMPTS, 5, do_sample=True, temperature=0.0)
    ours.train()
    generate_lm(ours, PROMPTS, 2)
    assert ours.training  # the model's mode is restored
    ours.eval()
