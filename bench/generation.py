"""Decoding figures: the key/value cache against recomputing the prefix, prunelab's greedy and beam search
against Hugging Face MarianMT's `generate`, and Michel et al.'s head removal by batch size."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from harness import Figure, build_run, compose, first_batches, interleave, paired, seconds, spread

from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import attention_names, set_gate
from prunelab.models.decoding import beam_search, greedy_decode
from prunelab.models.surgery import prune_heads
from prunelab.pruning import NoPruner


def fixed_length(model: Transformer, src: torch.Tensor, steps: int, beam: int = 1) -> None:
    """Decode exactly `steps` tokens per sentence (eos_id=-1 never ends a hypothesis early)."""
    if beam == 1:
        greedy_decode(model, src, bos_id=1, eos_id=-1, max_len_a=0.0, max_len_b=steps)
    else:
        beam_search(model, src, bos_id=1, eos_id=-1, beam_size=beam, max_len_a=0.0, max_len_b=steps)


@torch.no_grad()
def kv_cache(steps: int, reps: int) -> list[Figure]:
    """Goal 4: greedy decoding of `steps` tokens with the incremental cache vs recomputing the whole prefix
    at every step (the decoder run over all tokens so far, as without a cache), transformer_tiny shape."""
    torch.manual_seed(0)
    model = build_transformer(vocab_size=1500, d_model=128, n_heads=4, d_ff=512, enc_layers=2, dec_layers=2).eval()
    src = torch.randint(4, 1500, (64, 20), generator=torch.Generator().manual_seed(0))

    def no_cache() -> None:
        mem, mask = model.encode(src)
        tgt = torch.ones(src.size(0), 1, dtype=torch.long)
        for _ in range(steps):
            nxt = model.decode(tgt, mem, mask)[:, -1].argmax(-1, keepdim=True)
            tgt = torch.cat([tgt, nxt], 1)

    r = interleave({"cache": seconds(lambda: fixed_length(model, src, steps)), "full": seconds(no_cache)}, reps)
    return [
        paired(
            "decoding", f"KV cache speed-up, {steps} tokens", r["full"], r["cache"], goal=3.0, note="batch 64, greedy"
        )
    ]


@torch.no_grad()
def hf_generation(
    model_name: str, steps: int, reps: int, batch: int = 64, overrides: Sequence[str] = ()
) -> list[Figure]:
    """Goal 3, generation: output tokens/s of prunelab's decoders vs MarianMT.generate on the same source
    sentences (the run's data), both made to emit exactly `steps` tokens, greedy and beam 4."""
    from training import marian_like

    cfg = compose(f"model={model_name}", *overrides)
    dm, task = build_run(cfg, NoPruner())
    tok = dm.tokenizer
    src = first_batches(dm.val_dataloader(), 1)[0]["src"][:batch]
    ours = task.model.eval()
    hf = marian_like(ours, tok.bos_id, tok.eos_id).eval()
    mask = src.ne(tok.pad_id)
    out: list[Figure] = []
    for beam in (1, 4):

        def theirs(beam: int = beam) -> None:
            hf.generate(
                input_ids=src,
                attention_mask=mask,
                num_beams=beam,
                do_sample=False,
                max_new_tokens=steps,
                min_new_tokens=steps,
                length_penalty=0.6,
            )

        r = interleave(
            {"prunelab": seconds(lambda beam=beam: fixed_length(ours, src, steps, beam)), "hf": seconds(theirs)}, reps
        )
        name = "greedy" if beam == 1 else f"beam {beam}"
        note = f"{model_name} shape, batch {src.size(0)}, {steps} tokens each"
        out.append(
            paired(
                "vs HF", f"generation tok/s, {name}: prunelab / MarianMT", r["hf"], r["prunelab"], goal=1.0, note=note
            )
        )
    return out


BASE_SHAPE = {"vocab_size": 8000, "d_model": 512, "n_heads": 8, "d_ff": 2048, "enc_layers": 6, "dec_layers": 6}


@torch.no_grad()
def heads(
    rounds: int, steps: int = 20, shape: dict[str, int] | None = None, batch_sizes: Sequence[int] = (1, 4, 16, 64)
) -> list[Figure]:
    """Michel et al. (2019) Table 4: inference examples/s with half of every layer's heads removed vs dense,
    transformer_base dimensions (or `shape`), greedy decoding of `steps` tokens, at each of `batch_sizes`."""
    torch.manual_seed(0)
    shape = shape or BASE_SHAPE
    vocab = shape["vocab_size"]
    dense = build_transformer(**shape, dropout=0.0).eval()
    half = {n: list(range(0, dense.cfg.n_heads, 2)) for n in attention_names(dense)}
    pruned = copy.deepcopy(dense)
    prune_heads(pruned, half)
    masked = copy.deepcopy(dense)
    for name, hs in half.items():
        for h in hs:
            set_gate(masked, f"{name}.h{h}", 0.0)
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randint(4, vocab, (8, 20), generator=g), torch.randint(4, vocab, (8, 12), generator=g)
    diff = float((pruned(src, tgt) - masked(src, tgt)).abs().max())
    out = [
        Figure(
            "heads", "removed vs masked heads: max |logit difference|", diff, unit="", goal=1e-4, lower_is_better=True
        )
    ]
    for B in batch_sizes:
        src = torch.randint(4, vocab, (B, 20), generator=g)
        r = interleave(
            {
                "dense": seconds(lambda s=src: fixed_length(dense, s, steps)),
                "pruned": seconds(lambda s=src: fixed_length(pruned, s, steps)),
            },
            rounds,
        )
        out.append(
            paired(
                "heads",
                f"50% heads removed: speed-up at batch {B}",
                r["dense"],
                r["pruned"],
                goal=1.175 if B == 64 else None,
                note=f"{'transformer_base' if shape == BASE_SHAPE else 'reduced'} shape, greedy {steps} tokens",
            )
        )
    out.append(spread("heads", f"dense examples/s at batch {B}", [B / t for t in r["dense"]], unit="ex/s"))
    return out
