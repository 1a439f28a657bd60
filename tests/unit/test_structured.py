"""Structured removal (issue 27): feed-forward neurons cut out equal the same neurons masked (their fc2 columns at 0),
for the NMT Transformer, a classifier and a Llama-shaped decoder; removal composes, saves and reloads; the width
scores agree with independent computations (hooks on other modules, finite differences, Michel's I_h); the cost
model agrees with torch's FLOP counter and with the parameters actually removed; the structured pruner meets its
budget and keeps what it must."""

from __future__ import annotations

import collections
import copy
import math
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from prunelab.criteria.components import block_influence
from prunelab.criteria.heads import head_importance
from prunelab.criteria.width import width_importance
from prunelab.errors import UserError
from prunelab.models import Transformer
from prunelab.models.addressing import attention_names, component, component_names, set_gate
from prunelab.models.causal_lm import IGNORE, build_causal_lm
from prunelab.models.classifier import build_classifier
from prunelab.models.cost import cost, flops_per_token
from prunelab.models.surgery import (
    feed_forward_names,
    load_state_dict_with_heads,
    prune_heads,
    prune_neurons,
    remaining_neurons,
    remove_components,
)
from prunelab.models.transformer import ACTIVATIONS
from prunelab.pruning.structured import StructuredPruner, removed_layers, unit_cost


def llama(seed: int = 0):
    torch.manual_seed(seed)
    return build_causal_lm(
        vocab_size=60, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, dec_layers=3, dropout=0.0, max_len=64,
        positions="rope", norm="rms", ffn="glu", activation="silu", qkv_bias=False, out_bias=False, ff_bias=False,
        embed_scale=False, tie_embeddings=False,
    ).eval()  # fmt: skip


def classifier(seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier(
        num_classes=3, vocab_size=50, d_model=32, n_heads=4, d_ff=64, enc_layers=3, dropout=0.0, max_len=64,
        activation="gelu",
    ).eval()  # fmt: skip


def lm_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 60, (3, 9), generator=g)
    target = torch.randint(3, 60, (3, 9), generator=g)
    real = torch.ones(3, 9, dtype=torch.bool)
    real[1, 6:] = False
    target[1, 6:] = IGNORE
    return {"src": src, "target": target, "real": real}


def cls_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 50, (4, 8), generator=g)
    src[2, 5:] = 0
    return {"src": src, "label": torch.tensor([0, 1, 2, 1])}


def nmt_batch(batch: dict) -> dict:
    tgt_out = torch.cat([batch["tgt_in"][:, 1:], torch.full((3, 1), 2)], 1)
    return {**batch, "tgt_out": tgt_out}


def outputs(model, batch: dict) -> torch.Tensor:
    if "target" in batch:
        return model(batch["src"])
    if "label" in batch:
        return model(batch["src"])
    return model(batch["src"], batch["tgt_in"])


@torch.no_grad()
def mask_neurons(model, neurons: dict[str, list[int]]) -> None:
    """The masked model: the neurons' fc2 columns at zero (nothing they compute reaches the output)."""
    for name, ns in neurons.items():
        component(model, name).fc2.weight[:, ns] = 0.0


def random_neurons(model, rng: random.Random) -> dict[str, list[int]]:
    out = {}
    for name in feed_forward_names(model):
        width = component(model, name).width
        out[name] = rng.sample(range(width), rng.randint(0, width - 1))
    return out


@pytest.mark.parametrize("which", ["nmt", "classifier", "llama"])
@pytest.mark.parametrize("seed", [0, 1])
def test_removed_neurons_equal_masked_neurons(which: str, seed: int, tiny_model: Transformer, batch: dict) -> None:
    model, b = {
        "nmt": (tiny_model, batch),
        "classifier": (classifier(), cls_batch()),
        "llama": (llama(), lm_batch()),
    }[which]
    rng = random.Random(seed)
    neurons = random_neurons(model, rng)
    dense = copy.deepcopy(model)
    masked = copy.deepcopy(model)
    mask_neurons(masked, neurons)
    before = sum(p.numel() for p in model.parameters())
    prune_neurons(model, neurons)
    want = outputs(masked, b)
    assert not torch.allclose(want, outputs(dense, b), atol=1e-4)  # the masking shows in the outputs
    torch.testing.assert_close(outputs(model, b), want, atol=1e-5, rtol=1e-5)
    # every removed neuron took its row of fc1 (and of fc3), its bias, and its column of fc2
    d = model.cfg.d_model
    glu = model.cfg.ffn == "glu"
    per_neuron = (2 + glu) * d + (1 + glu) * model.cfg.ff_bias
    assert before - sum(p.numel() for p in model.parameters()) == per_neuron * sum(len(v) for v in neurons.values())
    for name, ns in neurons.items():
        assert set(remaining_neurons(model)[name]) == set(range(model.cfg.d_ff)) - set(ns)


def test_neuron_removal_composes_and_reloads(tiny_model: Transformer, batch: dict, tmp_path) -> None:
    masked = copy.deepcopy(tiny_model)
    mask_neurons(masked, {"enc.0.ff": [1, 7, 30], "dec.1.ff": list(range(0, 64, 2))})
    prune_neurons(tiny_model, {"enc.0.ff": [7]})
    prune_neurons(tiny_model, {"enc.0.ff": [30, 7, 1], "dec.1.ff": list(range(0, 64, 2))})  # 7 is gone already
    assert remaining_neurons(tiny_model)["enc.0.ff"] == [n for n in range(64) if n not in (1, 7, 30)]
    torch.testing.assert_close(tiny_model(batch["src"], batch["tgt_in"]), masked(batch["src"], batch["tgt_in"]))
    prune_heads(tiny_model, {"dec.0.ea": [1, 2]})
    remove_components(tiny_model, ["enc.1.sa", "enc.1.ff"])  # a whole layer
    torch.save(tiny_model.state_dict(), tmp_path / "pruned.pt")
    fresh = Transformer(tiny_model.cfg).eval()
    load_state_dict_with_heads(fresh, torch.load(tmp_path / "pruned.pt", weights_only=True))
    assert remaining_neurons(fresh) == remaining_neurons(tiny_model)
    assert component(fresh, "dec.1.ff").fc1.weight.shape == (32, 32)
    assert torch.equal(fresh(batch["src"], batch["tgt_in"]), tiny_model(batch["src"], batch["tgt_in"]))
    assert "enc.0.ff.neuron_ids" in fresh.state_dict() and "enc.0.sa.neuron_ids" not in fresh.state_dict()
    assert "dec.0.ff.neuron_ids" not in fresh.state_dict()  # unpruned feed-forwards keep their keys


def test_width_and_depth_removal_equal_the_masked_model(batch: dict, tiny_model: Transformer) -> None:
    """Heads, neurons and a whole layer removed together == head gates, fc2 columns and sub-layer gates at 0 (pre-norm:
    a gated-off sub-layer adds exactly 0)."""
    masked = copy.deepcopy(tiny_model)
    heads = {"enc.0.sa": [0, 3], "dec.1.sa": [2]}
    neurons = {"enc.0.ff": list(range(10)), "dec.0.ff": [5, 6]}
    for name, hs in heads.items():
        for h in hs:
            set_gate(masked, f"{name}.h{h}", 0.0)
    mask_neurons(masked, neurons)
    for kind in ("sa", "ea", "ff"):
        set_gate(masked, f"dec.1.{kind}", 0.0)
    prune_heads(tiny_model, heads)
    prune_neurons(tiny_model, neurons)
    remove_components(tiny_model, ["dec.1.sa", "dec.1.ea", "dec.1.ff"])
    assert removed_layers(tiny_model) == ["dec.1"]
    torch.testing.assert_close(tiny_model(batch["src"], batch["tgt_in"]), masked(batch["src"], batch["tgt_in"]))


# --- scores ------------------------------------------------------------------------------------------------------
def test_activation_scores_match_hooks_on_fc1_and_the_heads(tiny_model: Transformer, batch: dict) -> None:
    """Minitron's mean |activation| of each neuron and mean L2 norm of each head's output, over real tokens,
    recomputed from fc1's output (act applied here) and from the attention's merged heads via other hooks."""
    b = nmt_batch(batch)
    scores = width_importance(tiny_model, [b], "activation")
    seen = {}
    hooks = [
        component(tiny_model, "enc.0.ff").fc1.register_forward_hook(lambda m, a, y: seen.__setitem__("ff", y)),
        component(tiny_model, "dec.1.sa").out_proj.register_forward_hook(lambda m, a, y: seen.__setitem__("sa", a[0])),
    ]
    with torch.no_grad():
        tiny_model(b["src"], b["tgt_in"])
    for h in hooks:
        h.remove()
    real_src = b["src"] != 0
    h = ACTIVATIONS["relu"](seen["ff"])[real_src]  # (N, d_ff)
    torch.testing.assert_close(scores["enc.0.ff"], h.abs().mean(0))
    o = seen["sa"][b["tgt_in"] != 0].view(-1, 4, 8)  # (N, H, hs): decoder positions that are not padding
    torch.testing.assert_close(scores["dec.1.sa"], o.norm(dim=-1).mean(0))


def test_taylor_head_scores_are_michels_unnormalised_importance(tiny_model: Transformer, batch: dict) -> None:
    b = nmt_batch(batch)
    ours = width_importance(tiny_model, [b], "taylor", names=attention_names(tiny_model))
    michel = head_importance(tiny_model, [b], normalize=False)
    for name in attention_names(tiny_model):
        torch.testing.assert_close(ours[name], michel[name], rtol=1e-4, atol=1e-7)


def test_taylor_neuron_scores_match_per_example_weight_gradients() -> None:
    """E_x |∂L(x)/∂ξ_n|, recomputed without gates: scaling neuron n's fc2 column by ξ gives
    ∂L/∂ξ = <∂L/∂W[:, n], W[:, n]>, from ordinary weight gradients, one example at a time; and a central difference
    agrees to its precision."""
    model = llama()
    b = lm_batch()
    scores = width_importance(model, [b], "taylor", names=["dec.1.ff"])
    fc2 = component(model, "dec.1.ff").fc2
    per_example = []
    for i in range(3):
        model.zero_grad()
        model.example_losses({k: v[i : i + 1] for k, v in b.items()}).sum().backward()
        per_example.append((fc2.weight.grad * fc2.weight.detach()).sum(0))  # (d_ff,)
    want = torch.stack(per_example).abs().mean(0)
    torch.testing.assert_close(scores["dec.1.ff"], want, rtol=1e-5, atol=1e-8)
    eps, n = 1e-2, int(want.argmax())
    with torch.no_grad():
        col = fc2.weight[:, n].clone()
        fc2.weight[:, n] = col * (1 + eps)
        up = model.example_losses(b)
        fc2.weight[:, n] = col * (1 - eps)
        down = model.example_losses(b)
        fc2.weight[:, n] = col
    assert float(scores["dec.1.ff"][n]) == pytest.approx(float(((up - down) / (2 * eps)).abs().mean()), rel=1e-2)


# --- cost ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["nmt", "llama"])
def test_flops_per_token_agree_with_torchs_flop_counter(which: str, tiny_model: Transformer) -> None:
    """The matrix products of a forward pass as torch.utils.flop_counter counts them (the Linears and the output
    projection; prunelab's attention kernels are not ops it counts), plus each attention's products, softmax(QK^T)V
    written out as matmuls for the heads left, counted by it at the same length."""
    L = 12
    model = tiny_model if which == "nmt" else llama()
    prune_neurons(model, {"dec.1.ff": list(range(9))})
    prune_heads(model, {attention_names(model)[0]: [1]})
    src = torch.randint(4, 50, (1, L))
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model(src) if which == "llama" else model(src, src)
    total = sum(counter.get_flop_counts()["Global"].values())
    for name in attention_names(model):
        attn = component(model, name)
        q = torch.zeros(1, attn.n_heads, L, attn.head_dim)
        with FlopCounterMode(display=False) as products:
            (q @ q.transpose(-1, -2)).softmax(-1) @ q
        total += products.get_total_flops()
    assert flops_per_token(model, context=L) * L == total


@pytest.mark.parametrize("which", ["nmt", "classifier", "llama"])
def test_unit_costs_are_what_removal_saves(which: str, tiny_model: Transformer) -> None:
    model = {"nmt": tiny_model, "classifier": classifier(), "llama": llama()}[which]
    for name in (feed_forward_names(model)[0], attention_names(model)[-1]):
        for budget, key in (("params", "params"), ("flops", "flops_per_token")):
            pruned = copy.deepcopy(model)
            before = cost(pruned, 16)[key]
            per_unit = unit_cost(component(pruned, name), budget, 16)
            if name.endswith("ff"):
                prune_neurons(pruned, {name: [3, 4, 5]})
                assert before - cost(pruned, 16)[key] == 3 * per_unit
            else:  # a query head (under grouped-query attention its group keeps its other head)
                prune_heads(pruned, {name: [1]})
                assert before - cost(pruned, 16)[key] == per_unit


# --- the pruner ------------------------------------------------------------------------------------------------------
class Data:
    def __init__(self, batches: list[dict]):
        self.batches = batches

    def train_dataloader(self):
        return iter(self.batches)

    val_dataloader = train_dataloader


@pytest.mark.parametrize("scope", ["per_layer", "global"])
@pytest.mark.parametrize("budget", ["params", "stack_params", "flops"])
def test_width_pruner_meets_its_budget(scope: str, budget: str) -> None:
    model = llama()
    pruner = StructuredPruner(sparsity=0.3, structure="width", budget=budget, scope=scope, flops_context=16)
    pruner.attach(model)
    pruner.use_data(Data([lm_batch(0), lm_batch(1)]))
    pruner.on_round_end(model, 0)
    report = pruner.report(model)["structured"]
    key = {"params": "params", "stack_params": "stack_params", "flops": "flops_per_token"}[budget]
    achieved = report[f"{key.removesuffix('_per_token')}_removed_fraction"]
    assert pruner.report(model)["sparsity"]["overall"] == achieved
    # whole heads (and K/V groups emptied) are made up for by neurons: off by at most one neuron per feed-forward
    per_neuron = unit_cost(component(llama(), "dec.0.ff"), "flops" if budget == "flops" else "params", 16)
    dense = cost(llama(), 16)[key]
    assert abs(achieved - 0.3) <= 3 * per_neuron / dense
    widths = report["widths"]
    assert all(w >= 1 for w in widths.values())
    if scope == "per_layer":  # the same fraction of every component: uniform widths
        assert len({w for n, w in widths.items() if n.endswith("ff")}) == 1
        assert len({w for n, w in widths.items() if n.endswith("sa")}) == 1


def test_width_pruner_removes_the_lowest_scores_per_layer() -> None:
    model = llama()
    b = [lm_batch(0)]
    scores = width_importance(model, b, "activation")
    pruner = StructuredPruner(sparsity=0.2, structure="width", units=["neurons"])
    pruner.attach(model)
    pruner.use_data(Data(b))
    plan = pruner.choose(model)
    for name, ns in plan["neurons"].items():
        kept = [n for n in range(48) if n not in ns]
        assert max(scores[name][ns]) <= min(scores[name][kept])
    assert plan["heads"] == {} and plan["layers"] == []


def wide_llama() -> Transformer:
    """llama() with 8 query heads (4 K/V groups) per layer: enough heads for rankings across layers to differ."""
    torch.manual_seed(0)
    return build_causal_lm(
        vocab_size=60, d_model=32, n_heads=8, n_kv_heads=4, d_ff=48, dec_layers=3, dropout=0.0, max_len=64,
        positions="rope", norm="rms", ffn="glu", activation="silu", qkv_bias=False, out_bias=False, ff_bias=False,
        embed_scale=False, tie_embeddings=False,
    ).eval()  # fmt: skip


def planted_width_scores(model: Transformer, seed: int = 4) -> dict[str, torch.Tensor]:
    """Scores for every head and neuron on very different scales per layer (layer 0 x1000, layer 2 x0.001) and of
    different shapes (powers of uniform draws), chosen so that ranking raw scores, or scores divided by their layer's
    max or sum, across layers picks other units than ranking them divided by their layer's L2 norm."""
    g = torch.Generator().manual_seed(seed)
    scale, power = (1000.0, 1.0, 0.001), (2.0, 0.5, 1.0)
    out = {}
    for n in component_names(model):
        i = int(n.split(".")[1])
        size = component(model, n).n_heads if n.endswith(".sa") else component(model, n).width
        out[n] = scale[i] * torch.rand(size, generator=g, dtype=torch.float64).pow(power[i]).float()
    return out


@pytest.mark.parametrize("units", ["heads", "neurons"])
def test_global_scope_removes_the_lowest_scores_normalised_per_layer(
    units: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scope=global ranks each kind of unit across layers by its score divided by the L2 norm of its layer's scores
    (Michel et al.'s normalisation for heads). On planted scores the units removed are the lowest normalised ones,
    computed here independently (every attention and feed-forward keeps units to spare, so the keep-one rule does not
    bind); ranking the raw scores would take nothing from layer 0 (x1000)."""
    model = wide_llama()
    planted = planted_width_scores(model)
    monkeypatch.setattr(
        "prunelab.criteria.width.width_importance",
        lambda model, batches, criterion, names: {n: planted[n] for n in names},
    )
    total = sum(p.numel() for p in model.parameters())
    d, head_dim = 32, 4
    # a head: its Q rows and out_proj columns (K/V go with whole groups); a neuron: its fc1 and fc3 rows, fc2 column
    per_unit = {"heads": 2 * head_dim * d, "neurons": 3 * d}[units]
    count = {"heads": 8, "neurons": 20}[units]
    pruner = StructuredPruner(sparsity=count * per_unit / total, structure="width", scope="global", units=[units])
    pruner.attach(model)
    pruner.use_data(Data([lm_batch(0)]))
    plan = pruner.choose(model)[units]
    chosen = {(n, u) for n, us in plan.items() for u in us}
    normalised = {
        (n, u): float(v) / math.sqrt(sum(float(w) ** 2 for w in s))
        for n, s in planted.items()
        if n.endswith(".sa" if units == "heads" else ".ff")
        for u, v in enumerate(s)
    }
    expected = set(sorted(normalised, key=normalised.get)[:count])
    per_layer = collections.Counter(n for n, _ in expected)
    assert (
        len(per_layer) == 3
        and max(per_layer.values()) < len(planted["dec.0.ff" if units == "neurons" else "dec.0.sa"]) - 1
    )
    assert chosen == expected


def test_depth_pruner_removes_the_least_influential_layers(tiny_model: Transformer, batch: dict) -> None:
    model = classifier()
    b = [cls_batch(0), cls_batch(1)]
    influence = block_influence(model, b, layers=True)
    pruner = StructuredPruner(sparsity=0.3, structure="depth", criterion="block_influence")
    pruner.attach(model)
    pruner.use_data(Data(b))
    pruner.on_round_end(model, 0)
    gone = removed_layers(model)
    assert gone == [min(influence, key=influence.get)]  # one of three layers is the closest to 30% of the params
    report = pruner.report(model)["structured"]
    assert report["layers_removed"] == gone
    assert report["params"]["before"] - report["params"]["after"] == sum(
        p.numel() for p in classifier().enc[int(gone[0].split(".")[1])].parameters()
    )


def test_bad_settings_are_one_clear_error() -> None:
    with pytest.raises(UserError, match=r"pruner\.structure"):
        StructuredPruner(0.3, structure="channels")
    with pytest.raises(UserError, match=r"pruner\.criterion for structure=depth"):
        StructuredPruner(0.3, structure="depth", criterion="taylor")
    with pytest.raises(UserError, match=r"pruner\.units"):
        StructuredPruner(0.3, units=["layers"])
    model = llama()
    pruner = StructuredPruner(0.9, structure="width", units=["heads"])
    pruner.attach(model)
    pruner.use_data(Data([lm_batch()]))
    with pytest.raises(UserError, match="can remove at most"):
        pruner.choose(model)


def test_scratch_recovery_reinitialises_the_smaller_model() -> None:
    """recovery=scratch: the cut architecture, freshly initialised (norms at 1, biases at 0, matrices Xavier-uniform),
    the same draw for the same seed; the pruned weights are gone."""
    model = classifier()
    prune_neurons(model, {"enc.0.ff": list(range(20))})
    prune_heads(model, {"enc.1.sa": [0]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = StructuredPruner(0.2, finetune_steps=5, recovery="scratch")
    assert pruner.stage(2) == "from scratch" and StructuredPruner(0.2, finetune_steps=5).stage(2) == "fine-tuned"
    torch.manual_seed(3)
    pruner.on_round_start(model, 2)
    again = copy.deepcopy(model)
    torch.manual_seed(3)
    pruner.on_round_start(again, 2)
    for (name, p), q in zip(model.named_parameters(), again.parameters(), strict=True):
        assert p.shape == before[name].shape and torch.equal(p, q)
        if p.dim() == 1:
            assert torch.all(p == (0.0 if name.endswith("bias") else 1.0)), name
        elif "embed" not in name:
            bound = (6 / sum(p.shape)) ** 0.5
            assert p.abs().max() <= bound and not torch.equal(p, before[name]), name
    with pytest.raises(UserError, match="finetune_steps"):
        StructuredPruner(0.2, recovery="scratch")


def test_depth_by_contribution_removes_the_layer_whose_loss_costs_least() -> None:
    """criterion=contribution: a layer's score is the sum of its sub-layers' drops from the task's scorer (perplexity
    here: a continuous score), before Eq. 1's clip; the chosen layer is the one with the smallest sum, computed here
    from the scorer's own ablation. In this random model that is also the layer whose removal costs least when all its
    sub-layers are zeroed together (it even helps), which the sum of clipped Eq. 1 scores misses."""
    from prunelab.criteria.ablation import gates_off
    from prunelab.tasks.language_modeling import LanguageModelingTask

    model = llama()
    b = [lm_batch(0), lm_batch(1)]

    class Task:
        def own_scorer(self, datamodule, settings=None):
            return LanguageModelingTask.scorer(datamodule, settings)

    pruner = StructuredPruner(sparsity=0.3, structure="depth", criterion="contribution")
    pruner.attach(model)
    pruner.use_data(Data(b), Task())
    names = [f"dec.{i}.{k}" for i in range(3) for k in ("sa", "ff")]
    res = Task().own_scorer(None).ablation(model, b, names)
    per_layer = {f"dec.{i}": 0.0 for i in range(3)}
    for n, v in res.drops.items():
        per_layer[n.rsplit(".", 1)[0]] += v
    low = sorted(per_layer.values())
    assert low[0] < low[1]  # one least important layer: choosing another shows
    scorer = Task().own_scorer(None)
    whole = {}
    for layer in per_layer:
        with gates_off(model, [f"{layer}.sa", f"{layer}.ff"]):
            whole[layer] = res.baseline - scorer.score(model, b)
    assert min(whole, key=whole.get) == min(per_layer, key=per_layer.get)
    pruner.on_round_end(model, 0)
    assert removed_layers(model) == [min(per_layer, key=per_layer.get)]
