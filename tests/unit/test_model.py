import dataclasses

import pytest
import torch

from prunelab.models import Transformer, TransformerConfig
from prunelab.models.addressing import component, component_names, component_type, gate, head_names, set_gate
from prunelab.models.decoding import beam_search, greedy_decode


@pytest.mark.parametrize("pre_norm", [True, False])
def test_gates_at_one_are_bit_identical_to_no_gates(pre_norm: bool, batch: dict) -> None:
    cfg = TransformerConfig(
        vocab_size=50,
        d_model=32,
        n_heads=4,
        d_ff=64,
        enc_layers=2,
        dec_layers=2,
        dropout=0.0,
        pre_norm=pre_norm,
        max_len=64,
    )
    torch.manual_seed(0)
    gated = Transformer(cfg).eval()
    plain = Transformer(dataclasses.replace(cfg, gated=False)).eval()
    plain.load_state_dict(gated.state_dict())
    assert torch.equal(gated(batch["src"], batch["tgt_in"]), plain(batch["src"], batch["tgt_in"]))


def test_addresses_cover_every_component_and_head(tiny_model: Transformer) -> None:
    names = component_names(tiny_model)
    assert names == [
        "enc.0.sa",
        "enc.0.ff",
        "enc.1.sa",
        "enc.1.ff",
        "dec.0.sa",
        "dec.0.ea",
        "dec.0.ff",
        "dec.1.sa",
        "dec.1.ea",
        "dec.1.ff",
    ]
    assert [component_type(n) for n in names[:2] + names[4:7]] == ["E:SA", "E:FF", "D:SA", "D:EA", "D:FF"]
    heads = head_names(tiny_model)
    assert len(heads) == 6 * 4 and "dec.1.ea.h3" in heads
    assert component(tiny_model, "dec.1.ea") is tiny_model.dec[1].ea
    with pytest.raises(KeyError):
        gate(tiny_model, "dec.1.ea.h4")
    with pytest.raises(KeyError):
        component(tiny_model, "enc.7.sa")


def test_head_gate_zero_equals_removing_the_head(tiny_model: Transformer, batch: dict) -> None:
    # Closing gate dec.0.ea.h1 must equal zeroing that head's columns of the output projection.
    hs = tiny_model.cfg.d_model // tiny_model.cfg.n_heads
    set_gate(tiny_model, "dec.0.ea.h1", 0.0)
    gated_out = tiny_model(batch["src"], batch["tgt_in"])
    set_gate(tiny_model, "dec.0.ea.h1", 1.0)
    with torch.no_grad():
        tiny_model.dec[0].ea.out_proj.weight[:, hs : 2 * hs] = 0
    torch.testing.assert_close(gated_out, tiny_model(batch["src"], batch["tgt_in"]))


def test_component_gate_zero_removes_the_sublayer(tiny_model: Transformer, batch: dict) -> None:
    # With E:FF of layer 1 gated off, the encoder output equals running layer 1 without its FF block.
    set_gate(tiny_model, "enc.1.ff", 0.0)
    mem, mask = tiny_model.encode(batch["src"])
    layer = tiny_model.enc[1]
    x = tiny_model.embed_tokens(batch["src"])
    x = tiny_model.enc[0](x, mask)
    h = layer.sa_res.inp(x)
    x = layer.sa_res.out(x, layer.sa(h, *layer.sa.project_kv(h), mask=mask))
    torch.testing.assert_close(mem, tiny_model.enc_norm(x))


def test_gate_gradient_is_available(tiny_model: Transformer, batch: dict) -> None:
    g = tiny_model.dec[1].ea.head_gate
    g.requires_grad_(True)
    tiny_model(batch["src"], batch["tgt_in"]).logsumexp(-1).sum().backward()
    assert g.grad is not None and g.grad.shape == (4,) and bool((g.grad != 0).any())
    assert all(n != "dec.1.ea.head_gate" for n, _ in tiny_model.named_parameters())  # not trained


def test_incremental_decoding_equals_full_recomputation(tiny_model: Transformer, batch: dict) -> None:
    full = tiny_model(batch["src"], batch["tgt_in"])  # (B, T, V)
    mem, mask = tiny_model.encode(batch["src"])
    cache = tiny_model.new_cache()
    steps = [tiny_model.decode_step(batch["tgt_in"][:, t], mem, mask, cache, t) for t in range(full.size(1))]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_outputs(tiny_model: Transformer) -> None:
    src = torch.tensor([[5, 6, 7, 2]])
    tgt = torch.tensor([[1, 8, 9]])
    padded = torch.tensor([[5, 6, 7, 2, 0, 0]])
    torch.testing.assert_close(tiny_model(src, tgt), tiny_model(padded, tgt), atol=1e-5, rtol=1e-5)


def test_beam_one_equals_greedy(tiny_model: Transformer, batch: dict) -> None:
    greedy = greedy_decode(tiny_model, batch["src"], bos_id=1, eos_id=2)
    beam1 = beam_search(tiny_model, batch["src"], bos_id=1, eos_id=2, beam_size=1)
    assert beam1 == greedy
    assert any(len(h) > 0 for h in greedy)


@torch.no_grad()
def _sequence_logprob(model: Transformer, src: torch.Tensor, hyp: list[int]) -> float:
    tgt_in = torch.tensor([[1, *hyp]])
    logp = model(src, tgt_in).log_softmax(-1)[0]
    return float(sum(logp[t, tok] for t, tok in enumerate([*hyp, 2])))


def test_beam_search_finds_better_or_equal_scores_than_greedy(tiny_model: Transformer, batch: dict) -> None:
    # with no length penalty, beam search maximises the model's log-probability at least as well as greedy
    for i in range(batch["src"].size(0)):
        src = batch["src"][i : i + 1]
        g = greedy_decode(tiny_model, src, 1, 2, max_len_a=1.0, max_len_b=4)[0]
        b = beam_search(tiny_model, src, 1, 2, beam_size=5, alpha=0.0, max_len_a=1.0, max_len_b=4)[0]
        # both end in EOS by the length limit at the latest, so both are complete sequences
        assert _sequence_logprob(tiny_model, src, b) >= _sequence_logprob(tiny_model, src, g) - 1e-4


def test_length_limit_is_per_sentence(tiny_model: Transformer) -> None:
    src = torch.tensor([[5, 6, 7, 8, 9, 10, 2], [5, 2, 0, 0, 0, 0, 0]])
    for hyps in (greedy_decode(tiny_model, src, 1, 2, 1.0, 3), beam_search(tiny_model, src, 1, 2, 2, 0.6, 1.0, 3)):
        assert len(hyps[0]) <= 7 + 3 - 1 and len(hyps[1]) <= 2 + 3 - 1  # EOS counts toward the limit


def test_batched_beam_equals_one_by_one(tiny_model: Transformer, batch: dict) -> None:
    together = beam_search(tiny_model, batch["src"], 1, 2, beam_size=3)
    alone = [beam_search(tiny_model, batch["src"][i : i + 1], 1, 2, beam_size=3)[0] for i in range(3)]
    assert together == alone


@pytest.mark.parametrize("beam", [1, 3])
def test_sentences_leaving_the_batch_early_do_not_change_any_result(tiny_model: Transformer, beam: int) -> None:
    """Sentences end at different steps (their own length limits; an EOS-prone model), leave the batch,
    and every translation stays what it is when decoded alone."""
    g = torch.Generator().manual_seed(7)
    src = torch.randint(4, 50, (6, 9), generator=g)
    for i, n in enumerate([9, 2, 6, 3, 8, 1]):
        src[i, n:] = 0
    with torch.no_grad():
        tiny_model.embed.weight[2].mul_(3.0)  # EOS likelier: some hypotheses end before their limit
    together = beam_search(tiny_model, src, 1, 2, beam, 0.6, 1.0, 2)
    alone = [beam_search(tiny_model, src[i : i + 1], 1, 2, beam, 0.6, 1.0, 2)[0] for i in range(6)]
    assert together == alone
    assert len({len(h) for h in together}) > 2  # the sentences did end at different steps


class MarkovDecoder:
    """A stand-in decoder whose next-token logits depend on the last token and the sentence (peaked, with
    EOS reachable from some tokens), so that beams end at different steps with very different scores."""

    def __init__(self, vocab: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = 4.0 * torch.randn(vocab, vocab, generator=g)
        self.cfg = type("Cfg", (), {"pad_id": 0})()

    def new_cache(self) -> dict:
        return {}

    def reorder_cache(self, cache: dict, rows: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        pass

    def decode_step(self, token, mem, mem_mask, cache, step) -> torch.Tensor:  # type: ignore[no-untyped-def]
        k = token.size(0) // mem.size(0)
        logits = self.table[token] + mem[:, 0, : self.table.size(1)].repeat_interleave(k, 0)
        logits[:, 0] = float("-inf")  # never pad, never BOS
        logits[:, 1] = float("-inf")
        return logits


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.5])
def test_settled_sentences_stop_early_with_the_result_of_a_full_search(
    alpha: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sentence whose best finished hypothesis can no longer be displaced or beaten stops before all its
    beams end; every result equals that of the search run until every beam has ended."""
    import prunelab.models.decoding as decoding
    from prunelab.models.decoding import beam_search_memory

    model = MarkovDecoder()
    mem = 2.0 * torch.randn(32, 1, 12, generator=torch.Generator().manual_seed(1))
    limits = torch.full((32,), 15)
    calls: list[int] = []
    real = decoding.settled

    def counted(*args: torch.Tensor | float) -> torch.Tensor:
        out = real(*args)  # type: ignore[arg-type]
        all_ended = args[2].view(out.size(0), -1).all(1)  # type: ignore[union-attr]
        calls.append(int((out & ~all_ended).sum()))  # settled while some beam was still open
        return out

    def search() -> list[list[int]]:
        return beam_search_memory(model, mem, torch.ones(32, 1), limits, 1, 2, 4, alpha)  # type: ignore[arg-type]

    monkeypatch.setattr(decoding, "settled", counted)
    early = search()
    assert sum(calls) > 0, "some sentence must settle before all its beams end"
    monkeypatch.setattr(decoding, "settled", lambda scores, *a: torch.zeros(scores.size(0), dtype=torch.bool))
    full = search()
    assert early == full
    assert len({len(h) for h in full}) > 2  # sentences of different lengths
