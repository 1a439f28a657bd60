"""Depth and component pruning by Wang & Tu's contribution (issue 36 item 2): removal ranks the score drops before
Eq. 1's clip. Eq. 1 clips each drop at C = 10% of the baseline; in a decoder LM most layers cost more than that, so by
the clipped scores they all tie and the tie went by order (`dec.0`, the most critical layer, first). The planted
example of the issue: 6 layers adding +1260, +9, +1.5, +9, +7, +100 perplexity; asked for two, the pruners must remove
dec.2 and dec.4. For BLEU a drop whose decoding stopped at the clip is only a lower bound: ties at the clip go by it,
with a warning. The clipped, normalised Eq. 1 scores stay what the Wang & Tu reports show."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from prunelab.criteria.components import contribution_scores
from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import component_names, gate
from prunelab.models.causal_lm import build_causal_lm
from prunelab.pruning.components import ComponentPruner
from prunelab.pruning.structured import StructuredPruner, removed_layers
from prunelab.scoring.scoring import PerplexityScorer
from prunelab.scoring.variants import AblationResult
from prunelab.tasks import TranslationTask

PPL = 20.0  # the planted model's perplexity: Eq. 1's clip C is 2.0 perplexity
INCREASE = [1260.0, 9.0, 1.5, 9.0, 7.0, 100.0]  # perplexity added when a layer's sub-layers are zeroed
SHARE = {"sa": 2 / 3, "ff": 1 / 3}  # how each layer's increase splits between its sub-layers
BY_HAND = ["dec.2", "dec.4"]  # the two layers that cost least: +1.5 and +7


def lm(layers: int = 6) -> Transformer:
    torch.manual_seed(0)
    return build_causal_lm(
        vocab_size=40, d_model=16, n_heads=2, d_ff=32, dec_layers=layers, dropout=0.0, max_len=32, positions="rope",
        norm="rms", ffn="glu", activation="silu", qkv_bias=False, out_bias=False, ff_bias=False, embed_scale=False,
        tie_embeddings=False,
    ).eval()  # fmt: skip


def drop_of(name: str) -> float:
    """The perplexity component `dec.{i}.{kind}` adds when zeroed."""
    _, i, kind = name.split(".")
    return SHARE[kind] * INCREASE[int(i)]


class PlantedPerplexity(PerplexityScorer):
    """The language-modelling task's scorer (its ablation zeroes each component in turn through the gates, a full pass
    each) with a planted model's perplexity: the baseline plus what each component whose gate is off adds."""

    def score(self, model: Transformer, batches: Sequence[dict]) -> float:
        off = [n for n in component_names(model) if float(gate(model, n)) == 0.0]
        return -(PPL + sum(drop_of(n) for n in off))


class Data:
    tokenizer = None  # BLEU's scorer asks for one; the planted ablations below never decode

    def __init__(self) -> None:
        self.batches = [{"src": torch.randint(3, 40, (2, 6)), "target": torch.randint(3, 40, (2, 6))}]

    def train_dataloader(self) -> Any:
        return iter(self.batches)

    val_dataloader = train_dataloader


def perplexity_task() -> Any:
    return SimpleNamespace(own_scorer=lambda datamodule, settings=None: PlantedPerplexity())


def layer_params(model: Transformer) -> int:
    return sum(p.numel() for p in model.dec[0].parameters())


def test_planted_example_ties_under_eq1() -> None:
    """The premise: by Eq. 1's clipped scores summed per layer every layer but dec.2 ties, so a ranking by them
    cannot tell dec.4 (+7) from dec.0 (+1260)."""
    drops = {f"dec.{i}.{k}": drop_of(f"dec.{i}.{k}") for i in range(6) for k in SHARE}
    per_layer = {f"dec.{i}": 0.0 for i in range(6)}
    for n, v in contribution_scores(drops, -PPL).items():
        per_layer[n.rsplit(".", 1)[0]] += v
    assert per_layer == pytest.approx({**{f"dec.{i}": 2.0 for i in range(6)}, "dec.2": 0.75})


def test_structured_depth_by_contribution_removes_the_layers_that_cost_least() -> None:
    model = lm()
    total = sum(p.numel() for p in model.parameters())
    # the budget of exactly two layers' parameters: the cost rule asks for two layers, the ranking says which
    pruner = StructuredPruner(sparsity=2 * layer_params(model) / total, structure="depth", criterion="contribution")
    pruner.attach(model)
    pruner.use_data(Data(), perplexity_task())
    pruner.on_round_end(model, 0)
    assert removed_layers(model) == BY_HAND
    assert pruner.report(model)["structured"]["layers_removed"] == BY_HAND


@pytest.mark.parametrize(
    ("granularity", "sparsity", "expected"),
    [
        ("layer", 2 / 6, [f"{layer}.{k}" for layer in BY_HAND for k in ("sa", "ff")]),
        # per component: +0.5 (dec.2.ff), +1.0 (dec.2.sa), +2.33 (dec.4.ff); by the clip every other one ties at C
        ("component", 3 / 12, ["dec.2.ff", "dec.2.sa", "dec.4.ff"]),
    ],
)
def test_component_pruner_by_contribution_removes_what_costs_least(
    granularity: str, sparsity: float, expected: list[str]
) -> None:
    model = lm()
    p = ComponentPruner(sparsity=sparsity, mode="remove", finetune_steps=0, granularity=granularity)
    p.attach(model)
    p.use_data(Data(), perplexity_task())
    assert p.choose(model) == expected
    p.on_round_end(model, 0)
    p.on_round_start(model, 1)  # mode=remove: cut out for real
    assert set(component_names(model, include_removed=True)) - set(component_names(model)) == set(expected)
    # the report keeps Wang & Tu's Eq. 1: clipped at C = 2, divided by the largest (C), summed per layer
    clipped = {n: min(drop_of(n), 2.0) / 2.0 for n in component_names(model, include_removed=True)}
    if granularity == "layer":
        clipped = {n: sum(v for m, v in clipped.items() if m.startswith(n.rsplit(".", 1)[0] + ".")) for n in clipped}
    assert p.report(model)["components"]["contribution"] == pytest.approx(clipped, abs=1e-6)


# --- BLEU: drops above the clip are lower bounds where decoding stopped early -----------------------------------
BASELINE = 50.0  # BLEU; the clip C is 5
STOPPED = {  # drop lower bounds (decoding stopped once the drop provably passed C): all tie at 1.0 under Eq. 1
    "enc.0.sa": 7.0,
    "enc.1.sa": 30.0,
    "enc.1.ff": 6.0,
    "dec.0.sa": 9.0,
    "dec.0.ea": 12.0,
    "dec.1.sa": 5.5,
    "dec.1.ea": 20.0,
}
EXACT = {"enc.0.ff": 0.5, "dec.0.ff": 0.2, "dec.1.ff": 1.0}


def bleu_ablation(exact: dict[str, float], stopped: dict[str, float], baseline: float) -> Any:
    """ablation_bleu as its early stop leaves it: `stopped` components carry only an upper bound on their BLEU."""

    def ablation(model: Any, batches: Any, tok: Any, settings: Any, names: Any = None, **kw: Any) -> AblationResult:
        assert sorted(names) == sorted([*exact, *stopped])
        return AblationResult(
            baseline=baseline,
            bleu={n: (baseline - exact[n] if n in exact else None) for n in names},
            bleu_upper_bound={n: baseline - stopped[n] for n in stopped},
            passes=1,
            seconds=0.0,
            baseline_seconds=0.0,
        )

    return ablation


def nmt() -> Transformer:
    torch.manual_seed(0)
    m = build_transformer(vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dec_layers=2, dropout=0.0)
    return m.eval()


@pytest.mark.parametrize(
    ("sparsity", "expected", "warned"),
    [
        (0.3, ["dec.0.ff", "enc.0.ff", "dec.1.ff"], []),  # the exact drops only: nothing to warn about
        (0.5, ["dec.0.ff", "enc.0.ff", "dec.1.ff", "dec.1.sa", "enc.1.ff"], ["dec.1.sa", "enc.1.ff"]),
    ],
)
def test_bleu_ties_at_the_clip_go_by_the_drops_lower_bounds_with_a_warning(
    sparsity: float,
    expected: list[str],
    warned: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr("prunelab.scoring.scoring.ablation_bleu", bleu_ablation(EXACT, STOPPED, BASELINE))
    model = nmt()
    p = ComponentPruner(sparsity=sparsity, mode="retrain", baseline="none")
    p.attach(model)
    p.use_data(Data(), SimpleNamespace(own_scorer=TranslationTask.scorer))  # BLEU by prunelab's beam
    with caplog.at_level(logging.WARNING, logger="prunelab"):
        assert p.choose(model) == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned:
        assert len(warnings) == 1 and all(n in warnings[0] for n in warned), warnings
        assert "lower bound" in warnings[0]
    else:
        assert warnings == []


@pytest.mark.parametrize(("layers", "expected", "warned"), [(2, ["dec.2", "dec.5"], False), (3, None, True)])
def test_structured_depth_bleu_ties_at_the_clip_go_by_the_lower_bounds_with_a_warning(
    layers: int,
    expected: list[str] | None,
    warned: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BLEU 30 (C = 3). dec.0, dec.1, dec.3 and dec.4 have both sub-layers stopped at the clip: each sums to 2 C under
    Eq. 1 (a tie); by their lower bounds dec.4 (3.1 + 3.05) costs least of them."""
    stopped = {
        "dec.0.sa": 25.0, "dec.0.ff": 4.0, "dec.1.sa": 3.5, "dec.1.ff": 3.2,
        "dec.3.sa": 10.0, "dec.3.ff": 3.2, "dec.4.sa": 3.1, "dec.4.ff": 3.05,
    }  # fmt: skip
    exact = {"dec.2.sa": 0.5, "dec.2.ff": 0.1, "dec.5.sa": 0.3, "dec.5.ff": 1.0}
    monkeypatch.setattr("prunelab.scoring.scoring.ablation_bleu", bleu_ablation(exact, stopped, 30.0))
    model = lm()
    total = sum(p.numel() for p in model.parameters())
    pruner = StructuredPruner(
        sparsity=layers * layer_params(model) / total, structure="depth", criterion="contribution"
    )
    pruner.attach(model)
    pruner.use_data(Data(), SimpleNamespace(own_scorer=TranslationTask.scorer))
    with caplog.at_level(logging.WARNING, logger="prunelab"):
        pruner.on_round_end(model, 0)
    assert removed_layers(model) == (expected or ["dec.2", "dec.4", "dec.5"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (len(warnings) == 1 and "dec.4" in warnings[0]) if warned else warnings == []
