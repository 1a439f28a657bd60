"""Criteria are objects a pruner is handed (`pruner.criterion`): a built-in by name (every existing value), or any
criterion class by `_target_`, which Hydra instantiates and the pruner uses: a planted criterion that scores one unit
lowest gets exactly that unit removed (a weight, a neuron, a layer, a component), and results.json names it by its
class path. A criterion of the wrong kind is one clear error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor, nn

from prunelab.cli.train import CONF_DIR
from prunelab.criteria.base import BlockScores, HeadCriterion, WeightCriterion, WidthCriterion, criterion_name
from prunelab.criteria.components import BlockInfluence, Contribution
from prunelab.criteria.heads import HeadImportance
from prunelab.criteria.weights import Magnitude, RandomScore
from prunelab.criteria.width import Activation, Taylor
from prunelab.errors import UserError
from prunelab.models import Transformer
from prunelab.models.addressing import attention_names, component_names
from prunelab.pruning import ComponentPruner, HeadPruner, LotteryTicketPruner, MagnitudePruner, StructuredPruner
from prunelab.pruning.random import RandomPruner
from prunelab.pruning.structured import removed_layers, unit_cost
from tests.tiny import tiny_llama

HERE = __name__  # this module's import path, for the `_target_`s below


def pruner_of(*overrides: str) -> Any:
    """The pruner `python train.py OVERRIDES` builds (Hydra instantiates nested `_target_` nodes)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return instantiate(compose("train", overrides=list(overrides)).pruner)


class Data:
    def __init__(self, batches: list[dict]):
        self.batches = batches

    def train_dataloader(self) -> Iterable[dict]:
        return iter(self.batches)

    val_dataloader = train_dataloader


def lm_batches() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"src": torch.randint(3, 40, (2, 7), generator=g), "target": torch.randint(3, 40, (2, 7), generator=g)}]


# --- planted criteria (user classes: they subclass nothing of prunelab's, or only the kind's base) ------------------
class NegatedMagnitude:
    """A weight criterion by duck typing: the LARGEST |w| scores lowest."""

    def __call__(self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {n: -w.detach().abs() for n, w in weights.items()}


class OneNeuronLowest(WidthCriterion):
    """Every unit scores 1, except neuron `slot` of `component`: 0."""

    def __init__(self, component: str, slot: int):
        self.component, self.slot = component, slot

    def __call__(self, model: nn.Module, batches: Iterable[dict], names: list[str]) -> dict[str, Tensor]:
        self.batches = list(batches)  # what the pruner handed in
        out = {}
        for n in names:
            m = model.get_submodule(n)
            out[n] = torch.ones(m.width if hasattr(m, "width") else m.n_heads)
        out[self.component][self.slot] = 0.0
        return out


class OneLayerLowest:
    """A block criterion by duck typing, answering a plain dict: layer `layer` (or its components) scores lowest."""

    def __init__(self, layer: str):
        self.layer = layer

    def __call__(self, model: nn.Module, batches: list[dict], *, layers: bool = False, scorer: Any = None) -> dict:
        self.scorer = scorer
        names = component_names(model)  # type: ignore[arg-type]
        units = sorted({n.rsplit(".", 1)[0] for n in names}) if layers else names
        return {u: 0.0 if u == self.layer or u.startswith(self.layer + ".") else 1.0 + i for i, u in enumerate(units)}


class LastComponentLowest(Contribution):
    """A subclass of a built-in is a criterion of its own (named by its class path): the last component scores 0."""

    needs_scorer = False

    def __call__(self, model: Any, batches: list[dict], *, layers: bool = False, scorer: Any = None) -> BlockScores:
        names = component_names(model)
        scores = {n: 0.0 if n == names[-1] else 1.0 for n in names}
        return BlockScores(ranking=scores, shown=scores)


# --- built-ins by name ---------------------------------------------------------------------------------------------
def test_every_existing_name_gives_its_builtin_object() -> None:
    assert type(MagnitudePruner(0.5).criterion) is Magnitude
    assert type(LotteryTicketPruner(0.5).criterion) is Magnitude
    assert type(RandomPruner(0.5, seed=7).criterion) is RandomScore and RandomPruner(0.5, seed=7).criterion.seed == 7
    assert type(StructuredPruner(0.2).criterion) is Activation
    assert type(StructuredPruner(0.2, criterion="taylor").criterion) is Taylor
    assert type(StructuredPruner(0.2, structure="depth", criterion="block_influence").criterion) is BlockInfluence
    assert type(StructuredPruner(0.2, structure="depth", criterion="contribution").criterion) is Contribution
    assert type(ComponentPruner(0.2).criterion) is Contribution
    assert type(ComponentPruner(0.2, criterion="block_influence").criterion) is BlockInfluence
    for p in (pruner_of("pruner=structured", "pruner.structure=depth", "pruner.criterion=contribution"),):
        assert type(p.criterion) is Contribution and p.criterion_name == "contribution"


def test_names_are_builtin_names_or_class_paths() -> None:
    assert [criterion_name(c()) for c in (Magnitude, Activation, Taylor, BlockInfluence, Contribution)] == [
        "magnitude",
        "activation",
        "taylor",
        "block_influence",
        "contribution",
    ]
    assert criterion_name(NegatedMagnitude()) == f"{HERE}.NegatedMagnitude"
    assert criterion_name(LastComponentLowest()) == f"{HERE}.LastComponentLowest"


def test_a_criterion_of_the_wrong_kind_is_one_clear_error() -> None:
    with pytest.raises(UserError, match=r"pruner\.criterion for structure=depth .* BlockCriterion"):
        StructuredPruner(0.3, structure="depth", criterion=Activation())
    with pytest.raises(UserError, match=r"pruner\.criterion for structure=width .* WidthCriterion"):
        StructuredPruner(0.3, criterion=Contribution())
    with pytest.raises(UserError, match=r"pruner\.criterion .* BlockCriterion"):
        ComponentPruner(0.3, criterion=Magnitude())
    with pytest.raises(UserError, match=r"pruner\.criterion must be one of magnitude"):
        MagnitudePruner(0.5, criterion="taylor")
    with pytest.raises(UserError, match=r"weight criterion"):
        MagnitudePruner(0.5, criterion=Taylor())


# --- `_target_`: the object Hydra builds is the one that scores ------------------------------------------------------
def test_mask_pruner_uses_a_weight_criterion_given_by_target(tiny_model: Transformer) -> None:
    """`pruner=mp +pruner.criterion={_target_: ...}`: the largest weights go (a brute-force check per matrix)."""
    pruner = pruner_of("pruner=mp", "sparsity=0.5", f"+pruner.criterion={{_target_:{HERE}.NegatedMagnitude}}")
    assert isinstance(pruner.criterion, NegatedMagnitude)
    original = {n: w.detach().clone() for n, w in tiny_model.named_parameters()}
    pruner.attach(tiny_model)
    pruner.prune_to(tiny_model, 0.5)
    for name, mask in pruner.masks.items():
        w0 = original[name].flatten()
        expected = torch.ones(w0.numel())
        expected[torch.argsort(w0.abs(), descending=True, stable=True)[: round(0.5 * w0.numel())]] = 0.0
        assert torch.equal(mask.flatten(), expected), name


def test_lottery_rounds_take_the_criterion_too(tiny_model: Transformer) -> None:
    """`pruner=lt`: the next round's mask comes from the criterion it is handed (here the largest weights go)."""
    pruner = pruner_of("pruner=lt", "sparsity=0.5", f"+pruner.criterion={{_target_:{HERE}.NegatedMagnitude}}")
    assert isinstance(pruner.criterion, NegatedMagnitude)
    original = {n: w.detach().clone() for n, w in tiny_model.named_parameters()}
    pruner.attach(tiny_model)
    pruner.on_round_end(tiny_model, 0)  # round 1's mask, from round 0's weights
    for name, mask in pruner.masks.items():
        w0 = original[name]
        assert float(w0[mask.bool()].abs().max()) <= float(w0[~mask.bool()].abs().min()), name


def test_width_pruner_removes_exactly_the_unit_a_target_criterion_scores_lowest() -> None:
    model = tiny_llama()
    total = sum(p.numel() for p in model.parameters())
    per_neuron = unit_cost(model.get_submodule("dec.1.ff"), "params", 128)
    pruner = pruner_of(
        "pruner=structured",
        f"sparsity={per_neuron / total}",
        "pruner.scope=global",
        "pruner.units=[neurons]",
        "pruner.importance_batches=1",
        f"pruner.criterion={{_target_:{HERE}.OneNeuronLowest,component:dec.1.ff,slot:17}}",
    )
    assert isinstance(pruner.criterion, OneNeuronLowest)
    pruner.attach(model)
    batches = lm_batches()
    pruner.use_data(Data(batches))
    plan = pruner.choose(model)
    assert plan["neurons"] == {"dec.1.ff": [17]} and plan["heads"] == {}
    assert pruner.criterion.batches == batches  # handed the importance batches
    assert pruner.report(model)["structured"]["criterion"] == f"{HERE}.OneNeuronLowest"


def test_depth_pruner_removes_exactly_the_layer_a_target_criterion_scores_lowest() -> None:
    model = tiny_llama()
    total = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.dec[0].parameters())
    pruner = pruner_of(
        "pruner=structured",
        "pruner.structure=depth",
        f"sparsity={layer / total}",
        f"pruner.criterion={{_target_:{HERE}.OneLayerLowest,layer:dec.1}}",
    )
    assert isinstance(pruner.criterion, OneLayerLowest)
    pruner.attach(model)
    pruner.use_data(Data(lm_batches()))
    pruner.on_round_end(model, 0)
    assert removed_layers(model) == ["dec.1"]
    assert pruner.criterion.scorer is None  # it does not read the task's score: not handed a scorer
    assert pruner.report(model)["structured"]["criterion"] == f"{HERE}.OneLayerLowest"


@pytest.mark.parametrize(("granularity", "target"), [("component", "dec.2.sa"), ("layer", "dec.0")])
def test_component_pruner_chooses_exactly_what_a_target_criterion_scores_lowest(granularity: str, target: str) -> None:
    model = tiny_llama()
    units = 6 if granularity == "component" else 3
    pruner = pruner_of(
        "pruner=components",
        "pruner.mode=remove",
        "pruner.finetune_steps=0",
        f"pruner.granularity={granularity}",
        f"sparsity={1 / units}",
        f"pruner.criterion={{_target_:{HERE}.OneLayerLowest,layer:{target}}}",
    )
    pruner.attach(model)
    scorer = object()
    pruner._datamodule, pruner._scorer = Data(lm_batches()), scorer
    chosen = pruner.choose(model)
    assert chosen == ([target] if granularity == "component" else [f"{target}.sa", f"{target}.ff"])
    assert pruner.criterion.scorer is scorer  # handed the task's scorer (it may read the score)
    pruner.on_round_end(model, 0)
    pruner.on_round_start(model, 1)
    assert pruner.report(model)["components"]["criterion"] == f"{HERE}.OneLayerLowest"


def test_a_subclass_of_a_builtin_is_used_and_named_by_its_class_path() -> None:
    model = tiny_llama()
    pruner = ComponentPruner(1 / 6, mode="remove", finetune_steps=0, criterion=LastComponentLowest())
    pruner.attach(model)
    pruner._datamodule, pruner._scorer = Data(lm_batches()), object()
    assert pruner.choose(model) == ["dec.2.ff"]
    assert pruner.criterion_name == f"{HERE}.LastComponentLowest"


def test_a_criterion_holds_its_own_settings() -> None:
    """RandomScore's seed is the criterion's: the same seed draws the same scores, another seed others."""
    weights = {"w": torch.zeros(4, 8)}
    masks = {"w": torch.ones(4, 8)}
    a, b, c = RandomScore(3)(weights, masks), RandomScore(3)(weights, masks), RandomScore(4)(weights, masks)
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])
    assert isinstance(RandomScore(3), WeightCriterion)


class OneHeadLowest(HeadCriterion):
    """Every head scores 1 except one: the head pruner must remove exactly that one."""

    def __init__(self, component: str, head: int):
        self.component, self.head = component, head
        self.seen: list[dict] = []

    def __call__(self, model: Any, batches: Iterable[dict], *, max_batches: int | None = None, groups: bool = False):
        self.seen = list(batches)[:max_batches]
        out = {n: torch.ones(model.cfg.n_heads) for n in attention_names(model)}
        out[self.component][self.head] = 0.0
        return out


def test_head_pruner_removes_exactly_the_head_a_target_criterion_scores_lowest() -> None:
    """pruner=heads is handed its criterion too (Michel et al.'s I_h by name, `head_importance`, or any
    HeadCriterion by `_target_`); one head of twelve goes, the planted one, and the report names the criterion."""
    assert type(pruner_of("pruner=heads", "sparsity=0.5").criterion) is HeadImportance
    model = tiny_llama()  # 3 layers of 4 heads
    pruner = pruner_of(
        "pruner=heads",
        f"sparsity={1 / 12}",
        "pruner.importance_batches=1",
        f"pruner.criterion={{_target_:{HERE}.OneHeadLowest,component:dec.1.sa,head:2}}",
    )
    assert isinstance(pruner.criterion, OneHeadLowest)
    pruner.attach(model)
    batches = lm_batches()
    pruner.use_data(Data(batches))
    assert pruner.choose(model) == ["dec.1.sa.h2"]
    assert pruner.criterion.seen == batches[:1]  # handed the importance batches, as many as asked
    with pytest.raises(UserError, match=r"pruner\.criterion must be one of head_importance"):
        HeadPruner(0.5, criterion="taylor")
