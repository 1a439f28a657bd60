"""Block influence (Men et al. 2024): 1 - cos(x_in, x_out) of the residual stream around a layer or a sub-layer,
against the hidden states computed layer by layer here; and the component pruner ranking layers by it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prunelab.criteria.ablation import gates_off
from prunelab.criteria.components import block_influence
from prunelab.errors import UserError
from prunelab.models.causal_lm import CausalLM
from prunelab.models.transformer import Transformer, TransformerConfig
from prunelab.pruning.components import ComponentPruner
from tests.tiny import tiny_llama

V = 41


def lm() -> CausalLM:
    """Llama-shaped (with the default biases of prunelab's Linears)."""
    return tiny_llama(3, vocab_size=V, qkv_bias=True, out_bias=True, ff_bias=True)


def data(pad_last: bool = False) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        w = torch.randint(0, V, (3, 13), generator=g)
        b = {"src": w[:, :-1], "target": w[:, 1:], "real": torch.ones(3, 12, dtype=torch.bool)}
        if pad_last:
            b["real"][0, 8:] = False
        out.append(b)
    return out


def manual_layers(model: CausalLM, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    sums, counts = {}, {}
    with torch.no_grad():
        for b in batches:
            x = model.embed_tokens(b["src"])
            rope = model.rope(0, x.size(1), x.dtype)
            for i, layer in enumerate(model.dec):
                y = layer(x, rope)
                cos = F.cosine_similarity(x, y, dim=-1)[b["real"]]
                sums[f"dec.{i}"] = sums.get(f"dec.{i}", 0.0) + float(cos.sum())
                counts[f"dec.{i}"] = counts.get(f"dec.{i}", 0) + cos.numel()
                x = y
    return {n: 1 - sums[n] / counts[n] for n in sums}


@pytest.mark.parametrize("pad_last", [False, True])
def test_layer_influence_equals_the_hidden_states_layer_by_layer(pad_last: bool) -> None:
    model = lm()
    got = block_influence(model, data(pad_last), layers=True)
    want = manual_layers(model, data(pad_last))
    assert got.keys() == want.keys()
    for n in want:
        assert got[n] == pytest.approx(want[n], abs=1e-6)
    assert all(v > 1e-3 for v in got.values())


def test_a_component_that_adds_nothing_has_no_influence() -> None:
    model = lm()
    with gates_off(model, ["dec.1.ff"]):
        got = block_influence(model, data())
    assert got["dec.1.ff"] == pytest.approx(0.0, abs=1e-6)
    assert got["dec.1.sa"] > 1e-3 and set(got) == {f"dec.{i}.{k}" for i in range(3) for k in ("sa", "ff")}


def test_post_norm_is_refused() -> None:
    model = Transformer(TransformerConfig(vocab_size=V, d_model=16, n_heads=2, d_ff=16, pre_norm=False))
    with pytest.raises(UserError, match="pre-norm"):
        block_influence(model, [{"src": torch.ones(1, 3, dtype=torch.long)}])


class _Data:
    def __init__(self, batches: list[dict[str, torch.Tensor]]):
        self.batches = batches

    def val_dataloader(self) -> list[dict[str, torch.Tensor]]:
        return self.batches


def test_layer_granularity_chooses_whole_layers_with_the_least_influence() -> None:
    model = lm()
    pruner = ComponentPruner(
        sparsity=0.34, mode="remove", finetune_steps=0, criterion="block_influence", granularity="layer"
    )
    pruner.attach(model)
    pruner._datamodule, pruner._scorer = _Data(data()), object()  # block influence scores nothing: no scorer use
    chosen = pruner.choose(model)
    bi = manual_layers(model, data())
    weakest = min(bi, key=bi.get)
    assert chosen == [f"{weakest}.sa", f"{weakest}.ff"]


@pytest.mark.parametrize("start", [1, 0], ids=["bos", "marian_pad_start"])
def test_decoder_layers_of_a_translation_model_count_only_real_target_positions(
    tiny_model: Transformer, start: int
) -> None:
    """An encoder-decoder: encoder layers over the real source tokens, decoder layers over the positions whose
    target the loss counts (tgt_out != pad: the decoder's own padding, not the source's), recomputed layer by layer;
    also when the decoder starts from the pad id (`start` 0), as Marian's does: that first position counts."""
    g = torch.Generator().manual_seed(4)
    src = torch.randint(4, 50, (3, 7), generator=g)
    src[0, 4:] = 0
    t = torch.randint(4, 50, (3, 8), generator=g)
    t[1, 4:] = 0  # a shorter target
    tgt_in = torch.cat([torch.full((3, 1), start), t], dim=1)  # start + t, padded
    tgt_out = torch.cat([t, torch.zeros(3, 1, dtype=torch.long)], dim=1)  # t + EOS (2), padded
    tgt_out[torch.arange(3), (t != 0).sum(1)] = 2
    batch = {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}
    got = block_influence(tiny_model, [batch], layers=True)
    with torch.no_grad():
        mask = tiny_model.key_mask(src)
        x, want = tiny_model.embed_tokens(src), {}
        for i, layer in enumerate(tiny_model.enc):
            y = layer(x, mask)
            want[f"enc.{i}"] = 1 - float(F.cosine_similarity(x, y, dim=-1)[src != 0].double().mean())
            x = y
        mem, mem_mask = tiny_model.encode(src)
        x = tiny_model.embed_tokens(tgt_in)
        for i, layer in enumerate(tiny_model.dec):
            y = layer(x, mem, mem_mask)
            want[f"dec.{i}"] = 1 - float(F.cosine_similarity(x, y, dim=-1)[tgt_out != 0].double().mean())
            x = y
    assert got == pytest.approx(want, rel=1e-5)


def test_structured_depth_refuses_post_norm_when_attached_before_any_work() -> None:
    from prunelab.pruning.structured import StructuredPruner

    post = Transformer(TransformerConfig(vocab_size=V, d_model=16, n_heads=2, d_ff=16, pre_norm=False))
    pre = Transformer(TransformerConfig(vocab_size=V, d_model=16, n_heads=2, d_ff=16, pre_norm=True))
    with pytest.raises(UserError, match="criterion=contribution"):
        StructuredPruner(0.3, structure="depth", criterion="block_influence").attach(post)
    StructuredPruner(0.3, structure="depth", criterion="block_influence").attach(pre)  # pre-norm: accepted
    StructuredPruner(0.3, structure="depth", criterion="contribution").attach(post)  # another criterion: accepted
