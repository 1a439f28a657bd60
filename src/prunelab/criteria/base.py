"""Criterion objects: how much each unit of one kind matters, as objects a pruner is handed (`pruner.criterion`), the
way Torch-Pruning's `Importance` is handed to its pruners. Criteria floor: no task, no run, no loop.

Three kinds, by the unit a pruner removes; each is a callable object that holds its own settings and is given what it
reads (weights and masks, calibration batches, the task's scorer) as call arguments by the pruner:

    WeightCriterion  (weights, masks) -> {matrix: scores of its shape}          mask pruners (MP, lottery, random)
    WidthCriterion   (model, batches, names) -> {component: (units,) by slot}   structured width (neurons, heads)
    BlockCriterion   (model, batches, layers=, scorer=) -> BlockScores          components and layers (depth)
    HeadCriterion    (model, batches, max_batches=, groups=) -> {attention: (H,)}  pruner=heads (Michel et al.)

Higher = more worth keeping, for every kind. A pruner's `criterion` setting is a built-in's name (`magnitude`,
`activation`, `contribution`, ...) or an object Hydra instantiates from a `_target_` node; a user's class need not
subclass these bases (any callable of the kind's signature serves), but a built-in of the wrong kind is refused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from prunelab.errors import UserError

Batch = dict[str, Any]


class Criterion:
    """A criterion of any kind. `name` is a built-in's name in configs (`pruner.criterion=NAME`) and results.json."""

    name: ClassVar[str] = ""

    def require(self, model: nn.Module) -> None:
        """Raise a UserError when `model` cannot be scored by this criterion (a pruner asks when it is attached, before
        any training); nothing by default."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class WeightCriterion(Criterion, ABC):
    """Scores every entry of the prunable weight matrices; a mask pruner masks the lowest (masked entries stay
    masked). `masks` are the current masks (1 kept, 0 masked), by the same names."""

    @abstractmethod
    def __call__(self, weights: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


class WidthCriterion(Criterion, ABC):
    """Scores every feed-forward neuron and attention head still present, {component: (units,)} by slot (the i-th
    unit left), for the components `names` (`enc.0.ff`, `dec.1.sa`), over calibration `batches`."""

    @abstractmethod
    def __call__(self, model: nn.Module, batches: Iterable[Batch], names: list[str]) -> dict[str, Tensor]: ...


class HeadCriterion(Criterion, ABC):
    """Scores every attention head (or, with `groups`, every K/V group) of every attention sub-layer, {`enc.0.sa`:
    (H,) or (groups,)}, over at most `max_batches` of `batches`; scores are compared across layers, so they are
    normalised per layer as the criterion sees fit (Michel et al.: L2)."""

    @abstractmethod
    def __call__(
        self, model: nn.Module, batches: Iterable[Batch], *, max_batches: int | None = None, groups: bool = False
    ) -> dict[str, Tensor]: ...


@dataclass
class BlockScores:
    """A block criterion's answer: `ranking`, what removal goes by (lowest first), per component (`dec.3.ff`) or with
    `layers` per layer (`dec.3`); `shown`, what a report shows (for contribution: Eq. 1's clipped, normalised scores,
    while removal ranks the drops before the clip); `bounded`, units whose ranking value is only a lower bound."""

    ranking: dict[str, float]
    shown: dict[str, float]
    bounded: set[str] = field(default_factory=set)


class BlockCriterion(Criterion, ABC):
    """Scores every component (sub-layer), or every layer with `layers`, over `batches`. `needs_scorer`: it reads the
    task's score (`scorer.ablation(model, batches, names)`: BLEU, accuracy or -perplexity), so the pruner hands it the
    task's scorer and the validation data; otherwise calibration batches and no scorer."""

    needs_scorer: ClassVar[bool] = False

    @abstractmethod
    def __call__(
        self, model: nn.Module, batches: list[Batch], *, layers: bool = False, scorer: Any = None
    ) -> BlockScores | dict[str, float]: ...


def block_scores(result: BlockScores | Mapping[str, float]) -> BlockScores:
    """A block criterion's result as BlockScores: a plain {unit: score} ranks and shows the same scores."""
    if isinstance(result, BlockScores):
        return result
    scores = dict(result)
    return BlockScores(ranking=scores, shown=scores)


def criterion_name(criterion: object) -> str:
    """What results.json and the logs call a criterion: a built-in's name (`activation`), or the class path of any
    other (`mylab.criteria.Fisher`). Only a class's own `name` counts: a subclass of a built-in is another criterion."""
    own = type(criterion).__dict__.get("name")
    if isinstance(own, str) and own:
        return own
    return f"{type(criterion).__module__}.{type(criterion).__qualname__}"


C = TypeVar("C", bound=Criterion)


def resolve(value: object, builtins: Mapping[str, type[C]], kind: type[C], key: str = "pruner.criterion") -> C:
    """`pruner.criterion` as an object: a built-in's name -> a fresh instance of it; an object (a `_target_` node that
    Hydra instantiated) -> itself, when it is callable and not a criterion of another kind. Anything else is one
    UserError naming the setting (`key`) and what it accepts."""
    if isinstance(value, str):
        if value in builtins:
            return builtins[value]()
        raise UserError(f"{key} must be one of {', '.join(builtins)}, got {value!r}")
    if callable(value) and not (isinstance(value, Criterion) and not isinstance(value, kind)):
        return value  # type: ignore[return-value]
    plain = kind.__name__.removesuffix("Criterion").lower()
    raise UserError(
        f"{key} must be one of {', '.join(builtins)} or a {kind.__name__} object (a {plain} criterion, by _target_), "
        f"got {value!r}"
    )
