"""`pruner=components`: use Wang & Tu's (2020) contribution scores to drop or rewind whole sub-layers.

`sparsity` is the fraction of components (sub-layers) chosen, the least important by contribution (Eq. 1)
on the validation data; 0.2 of the 30 components of a 6+6 model is 6. The choice ranks the drops before Eq. 1's
clip (every drop above C = 10% of the baseline scores 1, and such ties would go by name: see
criteria.components.removal_ranking); results.json reports the clipped Eq. 1 scores. Rounds (each a
`trainer.fit`):

mode=retrain (Table 3):
    0  dense      train the full model (or only evaluate it when the run starts from `ckpt=`)
    1  retrain    the architecture without the chosen components, trained from θ_0 (from scratch)
    2  shallow    with baseline=shallow: the full architecture without its top decoder layers (encoder
                  layers for a classifier), as many as make the parameter count closest to the retrain
                  model's, trained from θ_0
mode=rewind (Table 4):
    0  dense      as above; θ_f is the result
    1  continue   θ_f fine-tuned for finetune_steps (the baseline)
    2  rewind     θ_f with the chosen components reset to θ_0, fine-tuned for finetune_steps
mode=remove (depth pruning as ShortGPT, Men et al. 2024):
    0  dense      as above; θ_f is the result
    1  removed    θ_f without the chosen components (removed for real), fine-tuned for finetune_steps (0: scored as is)

`criterion`: contribution (Eq. 1, the score's drop when a component is zeroed) or block_influence (1 - cos of the
residual stream before and after, prunelab.criteria.components.block_influence; one forward pass), or any
BlockCriterion object (`pruner.criterion={_target_: ...}`, prunelab.criteria.base), handed the validation batches
and the task's scorer; results.json names it (a built-in's name, or its class path). `granularity`: component
(sub-layers) or layer (whole layers, every sub-layer of each; `sparsity` is then the fraction of layers).

Every level in results.json carries its parameter count and BLEU (accuracy for a classifier, whose components
are E:SA and E:FF, scored by accuracy drop), so the rows of Tables 3 and 4 read off it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.criteria.base import BlockCriterion, block_scores, criterion_name, resolve
from prunelab.criteria.components import BLOCK_CRITERIA, order_by_importance
from prunelab.distributed import from_rank_zero
from prunelab.errors import UserError
from prunelab.models.addressing import component_names
from prunelab.models.surgery import remove_components, restore_components
from prunelab.pruning.base import Pruner
from prunelab.scoring.variants import DecodeSettings

log = logging.getLogger("prunelab")
STAGES = {
    "retrain": ("dense", "retrain", "shallow"),
    "rewind": ("dense", "continue", "rewind"),
    "remove": ("dense", "removed"),
}
CRITERIA = ("contribution", "block_influence")
GRANULARITIES = ("component", "layer")


def _key(name: str) -> str:
    return name.replace(".", "__")


def warn_if_bounded(chosen: Sequence[str], bounded: set[str]) -> None:
    """Removal ranks by the unclipped drops; where a chosen unit's drop is only a lower bound (BLEU decoding stopped
    once the drop passed Eq. 1's clip C), it was chosen from among the units tied at the clip by their bounds: its
    true drop may exceed that of units kept. Say so."""
    reached = [u for u in chosen if u in bounded]
    if reached:
        log.warning(
            "removal reaches into the units tied at Eq. 1's clip (drop >= 10%% of the baseline, decoding stopped "
            "early): %s ranked by lower bounds on their drops, not exact drops",
            ", ".join(reached),
        )


class ComponentPruner(Pruner):
    def __init__(
        self,
        sparsity: float = 0.2,
        mode: str = "rewind",
        finetune_steps: int = 1000,
        baseline: str | None = "shallow",
        beam_size: int = 4,
        length_penalty: float = 0.6,
        score_batches: int | None = None,
        criterion: str | BlockCriterion = "contribution",
        granularity: str = "component",
    ):
        super().__init__()
        chosen = resolve(criterion, {n: BLOCK_CRITERIA[n] for n in CRITERIA}, BlockCriterion)  # type: ignore[type-abstract]
        if granularity not in GRANULARITIES:
            raise UserError(f"pruner.granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        self.criterion, self.granularity = chosen, granularity
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = sparsity
        if mode not in STAGES:
            raise UserError(f"pruner.mode must be one of {', '.join(STAGES)}, got {mode!r}")
        if baseline not in (None, "none", "shallow"):
            raise UserError(f"pruner.baseline must be shallow or none, got {baseline!r}")
        if finetune_steps < 1 and mode == "rewind":
            raise UserError(f"pruner.finetune_steps must be >= 1 for mode=rewind, got {finetune_steps}")
        self.mode = mode
        self.finetune_steps = finetune_steps
        self.shallow = mode == "retrain" and baseline == "shallow"
        self.settings = DecodeSettings(beam_size=beam_size, alpha=length_penalty)
        self.score_batches = score_batches
        if finetune_steps < 0:
            raise UserError(f"pruner.finetune_steps must be >= 0, got {finetune_steps}")
        self.rounds = 3 if (mode == "rewind" or self.shallow) else 2
        self._datamodule: Any = None
        self._scorer: Any = None
        self.chosen: list[str] = []
        self.scores: dict[str, float] = {}

    # --- lifecycle -----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        names = component_names(model, include_removed=True)  # type: ignore[arg-type]
        if not hasattr(self, "chosen_mask"):
            self.register_buffer("chosen_mask", torch.zeros(len(names), dtype=torch.bool))
            self.register_buffer("contribution", torch.full((len(names),), float("nan")))
            for k, v in model.state_dict().items():  # θ_0: the weights the model starts from
                if v.is_floating_point() and not k.endswith(("gate", "head_gate")):
                    self.register_buffer(f"init__{_key(k)}", v.detach().clone())
                    if self.mode in ("rewind", "remove"):  # θ_f, filled at the end of the dense round
                        self.register_buffer(f"final__{_key(k)}", torch.zeros_like(v))
        self._names = names

    def use_initial_weights(self, state: dict[str, Tensor]) -> None:
        """θ_0 of the run a `ckpt=` start came from (its init.pt), instead of this run's initialisation."""
        for k, v in state.items():
            if hasattr(self, f"init__{_key(k)}"):
                getattr(self, f"init__{_key(k)}").copy_(v)

    def use_data(self, datamodule: object, task: Any = None) -> None:
        self._datamodule = datamodule
        self._scorer = task.own_scorer(datamodule, self.settings) if task is not None else None

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        if round_idx == 0:
            return 0 if pretrained else max_steps
        return self.finetune_steps if self.mode in ("rewind", "remove") else max_steps

    def stage(self, round_idx: int) -> str:
        return STAGES[self.mode][round_idx]

    @property
    def sparsity_means(self) -> str:
        unit = "components (sub-layers)" if self.granularity == "component" else "layers"
        return (
            f"the fraction of the {unit} chosen, the least important by {self.criterion_name} first (mode={self.mode})"
        )

    def round_sparsity(self, round_idx: int) -> float:
        return 0.0 if round_idx == 0 or self.stage(round_idx) == "continue" else self.sparsity

    def same_as_targeting(self, round_idx: int) -> bool:
        return self.stage(round_idx) in ("retrain", "rewind", "removed")

    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        if round_idx != 0:
            return
        chosen = from_rank_zero(self.choose(model))  # every rank acts on rank 0's choice
        for n in chosen:
            self.chosen_mask[self._names.index(n)] = True
        if self.mode in ("rewind", "remove"):
            self._save(model, "final")  # θ_f, which the rewind (or removed) round starts from

    def enter_round(self, round_idx: int) -> None:
        self._restore_lists()

    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        self._restore_lists()
        stage = self.stage(round_idx)
        if stage == "retrain":
            remove_components(model, self.chosen)  # type: ignore[arg-type]
            self._load(model, "init")
        elif stage == "shallow":
            restore_components(model, component_names(model, include_removed=True))  # type: ignore[arg-type]
            remove_components(model, self.shallow_removal(model))  # type: ignore[arg-type]
            self._load(model, "init")
        elif stage == "rewind":
            self._load(model, "final")
            self._load(model, "init", only=self.chosen)
        elif stage == "removed":
            self._load(model, "final")
            remove_components(model, [n for n in self.chosen if n in component_names(model)])  # type: ignore[arg-type]

    # --- the method ---------------------------------------------------------------------------------
    @property
    def criterion_name(self) -> str:
        """The criterion as results.json and the logs name it."""
        return criterion_name(self.criterion)

    def choose(self, model: nn.Module) -> list[str]:
        """The `sparsity` fraction of components (or of layers) with the lowest score on the validation data."""
        if self._datamodule is None or self._scorer is None:
            raise RuntimeError("ComponentPruner.use_data(datamodule, task) must be called before pruning")

        batches = list(self._datamodule.val_dataloader())[: self.score_batches]
        names = component_names(model)  # type: ignore[arg-type]
        # the scorer says how the task scores (BLEU, accuracy, -perplexity): contribution ablates by it
        scored = block_scores(
            self.criterion(model, batches, layers=self.granularity == "layer", scorer=self._scorer)  # type: ignore[call-arg]
        )
        units, ranking, bounded = scored.shown, scored.ranking, scored.bounded
        count = round(self.sparsity * len(units))
        chosen_units = order_by_importance(ranking)[:count]
        warn_if_bounded(chosen_units, bounded)
        # every component gets its unit's score (a layer's for each of its sub-layers), for the report and ordering
        scores = {n: units[n if n in units else n.rsplit(".", 1)[0]] for n in names}
        for n, v in scores.items():
            self.contribution[self._names.index(n)] = v
        chosen = [n for u in chosen_units for n in names if n == u or n.startswith(u + ".")]
        log.info(
            "components: %d of %d %ss least important by %s: %s",
            count,
            len(units),
            self.granularity,
            self.criterion_name,
            ", ".join(chosen_units),
        )
        return chosen

    def shallow_removal(self, model: nn.Module) -> list[str]:
        """Whole top decoder layers (encoder layers for a classifier, which has no decoder), all their
        components, whose removal brings the parameter count closest to that of the model without the
        chosen components."""
        full = sum(p.numel() for p in model.parameters())
        target = full - sum(self._component_params(model, n) for n in self.chosen)
        side = "dec" if len(getattr(model, "dec", ())) else "enc"
        stack = getattr(model, side)
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in stack]
        best_k, best_gap = 0, abs(full - target)
        removed = 0
        for k in range(1, len(stack)):  # keep at least one layer
            removed += per_layer[len(stack) - k]
            if abs(full - removed - target) < best_gap:
                best_k, best_gap = k, abs(full - removed - target)
        return [f"{side}.{i}.{kind}" for i in range(len(stack) - best_k, len(stack)) for kind in stack[i].kinds]

    @staticmethod
    def _component_params(model: nn.Module, name: str) -> int:
        side, i, kind = name.split(".")
        layer = (model.enc if side == "enc" else model.dec)[int(i)]  # type: ignore[union-attr,index]
        mods = [getattr(layer, kind), getattr(layer, f"{kind}_res")]
        return sum(p.numel() for m in mods if m is not None for p in m.parameters())

    @torch.no_grad()
    def _load(self, model: nn.Module, which: str, only: list[str] | None = None) -> None:
        """Copy a snapshot (θ_0 = "init", θ_f = "final") into the model's weights, for every parameter or
        only those of the `only` components (with their residual LayerNorms)."""
        for k, p in model.state_dict().items():
            snap = getattr(self, f"{which}__{_key(k)}", None)
            if snap is None or snap.shape != p.shape:
                continue
            if only is not None and not any(k.startswith(f"{n}.") or k.startswith(f"{n}_res.") for n in only):
                continue
            p.copy_(snap)

    @torch.no_grad()
    def _save(self, model: nn.Module, which: str) -> None:
        for k, v in model.state_dict().items():
            snap = getattr(self, f"{which}__{_key(k)}", None)
            if snap is not None and snap.shape == v.shape:
                snap.copy_(v)

    def _restore_lists(self) -> None:
        self.scores = {n: float(v) for n, v in zip(self._names, self.contribution.tolist(), strict=True) if v == v}
        chosen = [n for n, c in zip(self._names, self.chosen_mask.tolist(), strict=True) if c]
        self.chosen = sorted(chosen, key=lambda n: self.scores.get(n, float("inf")))  # least important first

    # --- reporting -----------------------------------------------------------------------------------
    def masked_fraction(self) -> float:
        return 0.0

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict:
        self._restore_lists()
        present = component_names(model)  # type: ignore[arg-type]
        total = sum(p.numel() for p in model.parameters())
        return {
            "sparsity": {  # for this pruner: the fraction of components gone from the model
                "overall": 1.0 - len(present) / len(self._names),
            },
            "params": {"total": total, "remaining": total},
            "memory": {"model": {"dense_bytes": 4 * total}},
            "components": {
                "mode": self.mode,
                "criterion": self.criterion_name,  # what `contribution` below holds: Eq. 1 scores, or block influence
                "granularity": self.granularity,
                "chosen": self.chosen,  # by contribution, least important first
                "contribution": self.scores,
                "present": present,
            },
        }
