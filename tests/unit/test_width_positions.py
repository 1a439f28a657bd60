"""Width scores (Minitron's activation criterion) of an encoder-decoder whose decoder starts from the pad id, as
Marian's does: the decoder's neurons and heads are averaged over exactly the positions whose target the loss counts
(tgt_out != pad), the first included, against the activations recorded here with hooks."""

from __future__ import annotations

import torch

from prunelab.criteria.width import width_importance
from prunelab.data.batching import collate
from prunelab.models.transformer import Transformer

PAD, EOS = 0, 2


def marian_like_batches() -> list[dict[str, torch.Tensor]]:
    """Collated as the data collates a Marian checkpoint's pairs: the decoder's start id is the pad id."""
    g = torch.Generator().manual_seed(5)
    out = []
    for src_lens, tgt_lens in (((6, 4, 7), (5, 2, 6)), ((5, 8), (7, 3))):
        examples = [
            (
                [*torch.randint(4, 50, (s - 1,), generator=g).tolist(), EOS],
                torch.randint(4, 50, (t,), generator=g).tolist(),
                "",
                k,
            )
            for k, (s, t) in enumerate(zip(src_lens, tgt_lens, strict=True))
        ]
        b = collate(examples, pad_id=PAD, bos_id=PAD, eos_id=EOS)
        out.append({k: b[k] for k in ("src", "tgt_in", "tgt_out")})
    return out


def test_decoder_width_scores_average_over_the_positions_the_loss_counts(tiny_model: Transformer) -> None:
    data = marian_like_batches()
    assert all(bool((b["tgt_in"][:, 0] == PAD).all()) for b in data)  # position 0 reads the pad id, and is real
    got = width_importance(tiny_model, data, "activation")
    heads, hs = tiny_model.cfg.n_heads, tiny_model.cfg.d_model // tiny_model.cfg.n_heads
    readers = {
        f"dec.{i}.{c}": f"dec.{i}.{c}.{'fc2' if c == 'ff' else 'out_proj'}"
        for i in range(2)
        for c in ("sa", "ea", "ff")
    }
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in readers}
    current: dict[str, torch.Tensor] = {}
    for n, reader in readers.items():
        tiny_model.get_submodule(reader).register_forward_pre_hook(
            lambda m, a, n=n: inputs[n].append(a[0][current["real"]])
        )
    with torch.no_grad():
        for b in data:
            current["real"] = b["tgt_out"] != PAD  # the targets the loss counts
            tiny_model(b["src"], b["tgt_in"])
    for n in readers:
        h = torch.cat(inputs[n]).double()  # (loss tokens, units * width)
        assert h.shape[0] == sum(int((b["tgt_out"] != PAD).sum()) for b in data)
        want = h.abs().mean(0) if n.endswith(".ff") else h.view(h.shape[0], heads, hs).norm(dim=-1).mean(0)
        torch.testing.assert_close(got[n].double(), want, rtol=1e-5, atol=1e-6)
