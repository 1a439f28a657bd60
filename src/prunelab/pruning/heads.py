"""`pruner=heads`: remove the least important attention heads (Michel, Levy & Neubig 2019).

`sparsity` is the fraction of heads removed. Rounds (each a `trainer.fit` with its own step budget):

    0  dense       train the model (max_steps), or only evaluate it when the run starts from `ckpt=`
    1  pruned      I_h on `importance_batches` batches of the `importance_split` data, normalised per
                   layer; the lowest-scoring heads are cut out of Q/K/V/O (real removal); evaluated as is
    2  fine-tuned  only with `finetune_steps > 0`: the pruned model trains that many more steps

so `results.json` lists BLEU before pruning, right after it, and after fine-tuning, one level each.

`unit`: `head` removes query heads (a K/V group of a grouped-query attention goes once its last query head is gone);
`group` removes whole K/V groups with all of their query heads, ranked by the group's importance (the gradient of
one gate over the group, prunelab.criteria.heads). Without grouped-query attention the two are the same.
`sparsity` is the fraction of the unit removed; results.json says which unit it was.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from prunelab.criteria.ablation import ATTENTION_TYPES, order_by_score, scores_by_group, scores_by_head
from prunelab.criteria.base import HeadCriterion, criterion_name, resolve
from prunelab.criteria.heads import HEAD_CRITERIA
from prunelab.distributed import from_rank_zero
from prunelab.errors import UserError
from prunelab.models.addressing import attention_names, component, component_type
from prunelab.models.surgery import prune_heads
from prunelab.pruning.base import Pruner

log = logging.getLogger("prunelab")
STAGES = ("dense", "pruned", "fine-tuned")
UNITS = ("head", "group")


class HeadPruner(Pruner):
    def __init__(
        self,
        sparsity: float,
        finetune_steps: int = 0,
        importance_batches: int = 20,
        importance_split: str = "train",
        types: list[str] | None = None,
        unit: str = "head",
        criterion: HeadCriterion | str = "head_importance",
    ):
        super().__init__()
        self.criterion = resolve(criterion, HEAD_CRITERIA, HeadCriterion)  # type: ignore[type-abstract]
        if unit not in UNITS:
            raise UserError(f"pruner.unit must be one of {', '.join(UNITS)}, got {unit!r}")
        self.unit = unit
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = sparsity
        if finetune_steps < 0:
            raise UserError(f"pruner.finetune_steps must be >= 0, got {finetune_steps}")
        if importance_batches < 1:
            raise UserError(f"pruner.importance_batches must be >= 1, got {importance_batches}")
        if importance_split not in ("train", "valid"):
            raise UserError(f"pruner.importance_split must be train or valid, got {importance_split!r}")
        self.types = tuple(types) if types is not None else ATTENTION_TYPES
        unknown = set(self.types) - set(ATTENTION_TYPES)
        if unknown or not self.types:
            raise UserError(f"pruner.types must be a non-empty subset of {list(ATTENTION_TYPES)}, got {types}")
        self.finetune_steps = finetune_steps
        self.importance_batches = importance_batches
        self.importance_split = importance_split
        self.rounds = 3 if finetune_steps > 0 else 2
        self._datamodule: Any = None

    def attach(self, model: nn.Module) -> None:
        names = attention_names(model)  # type: ignore[arg-type]
        n_heads = model.cfg.n_heads  # type: ignore[union-attr]
        if not hasattr(self, "importance"):  # buffers, so a resumed run still reports what it removed
            self.register_buffer("importance", torch.full((len(names), n_heads), float("nan")))
            self.register_buffer("removed", torch.zeros(len(names), n_heads, dtype=torch.bool))
        self._names = names

    def use_data(self, datamodule: object, task: Any = None) -> None:
        self._datamodule = datamodule

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        if round_idx == 0:
            return 0 if pretrained else max_steps
        return self.finetune_steps if round_idx == 2 else 0

    def stage(self, round_idx: int) -> str:
        return STAGES[round_idx]

    @property
    def sparsity_means(self) -> str:
        unit = "attention heads" if self.unit == "head" else "K/V groups (each with its query heads)"
        return f"the fraction of the {unit} removed"

    def round_sparsity(self, round_idx: int) -> float:
        return 0.0 if round_idx == 0 else self.sparsity

    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        if round_idx != 0:
            return
        chosen = from_rank_zero(self.choose(model))  # every rank removes rank 0's choice
        self.remove(model, chosen)

    # --- the method ---------------------------------------------------------------------------------
    def scores(self, model: nn.Module) -> dict[str, float]:
        """Normalised I_h of every remaining head, by name."""
        if self._datamodule is None:
            raise RuntimeError("HeadPruner.use_data(datamodule) must be called before pruning")
        loader = (
            self._datamodule.train_dataloader()
            if self.importance_split == "train"
            else self._datamodule.val_dataloader()
        )
        raw = self.criterion(model, loader, max_batches=self.importance_batches, groups=self.unit == "group")
        if self.unit == "group":
            return scores_by_group(model, raw)  # type: ignore[arg-type]
        return scores_by_head(model, raw)  # type: ignore[arg-type]

    def choose(self, model: nn.Module) -> list[str]:
        """The heads to remove: the lowest I_h among the chosen attention types, globally, so that
        `sparsity` of those types' original heads are gone (heads removed earlier count)."""
        self._sync_removed(model)
        scores = self.scores(model)
        eligible = [i for i, n in enumerate(self._names) if component_type(n) in self.types]
        if self.unit == "group":  # a group's score stands for each of its heads in the importance table
            per_group = self.group_sizes(model)
            for name, value in scores.items():
                comp, g = name.rsplit(".g", 1)
                for h in component(model, comp).heads_of_groups([int(g)]):  # type: ignore[union-attr]
                    self.importance[self._names.index(comp), h] = value
            total = len(eligible) * self.importance.size(1) // per_group
            already = int(self.removed[eligible].sum()) // per_group
        else:
            for name, value in scores.items():
                comp, head = name.rsplit(".h", 1)
                self.importance[self._names.index(comp), int(head)] = value
            total = len(eligible) * self.importance.size(1)
            already = int(self.removed[eligible].sum())
        count = max(0, round(self.sparsity * total) - already)
        order = order_by_score(scores, self.types)
        log.info("heads: removing %d of %d %ss by I_h (%s)", count, total, self.unit, ", ".join(self.types))
        return order[:count]

    def group_sizes(self, model: nn.Module) -> int:
        """Query heads per K/V group (1 without grouped-query attention)."""
        cfg = model.cfg  # type: ignore[union-attr]
        return cfg.n_heads // cfg.kv_heads

    @torch.no_grad()
    def _sync_removed(self, model: nn.Module) -> None:
        """Heads already missing from the model (it came from a pruned run) count as removed."""
        for i, n in enumerate(self._names):
            left = set(component(model, n).head_ids.tolist())  # type: ignore[union-attr]
            for j in range(self.removed.size(1)):
                if j not in left:
                    self.removed[i, j] = True

    @torch.no_grad()
    def remove(self, model: nn.Module, heads: list[str]) -> None:
        """Remove heads (`dec.0.sa.h3`) or, for unit=group, K/V groups (`dec.0.sa.g1`) with their query heads."""
        if self.unit == "group":
            heads = [
                f"{comp}.h{h}"
                for name in heads
                for comp, g in [name.rsplit(".g", 1)]
                for h in component(model, comp).heads_of_groups([int(g)])  # type: ignore[union-attr]
            ]
        by_component: dict[str, list[int]] = {}
        for h in heads:
            comp, j = h.rsplit(".h", 1)
            by_component.setdefault(comp, []).append(int(j))
            self.removed[self._names.index(comp), int(j)] = True
        prune_heads(model, by_component)  # type: ignore[arg-type]

    # --- reporting -----------------------------------------------------------------------------------
    @torch.no_grad()
    def masked_fraction(self) -> float:
        return float(self.removed.float().mean()) if hasattr(self, "removed") else 0.0

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict:
        self._sync_removed(model)
        total = sum(p.numel() for p in model.parameters())
        n_heads = self.removed.size(1)
        cfg = model.cfg  # type: ignore[union-attr]
        d, hs = cfg.d_model, cfg.hs
        per_query = hs * (d + cfg.qkv_bias) + hs * d  # a query head: its rows of Q (and bias), its columns of O
        per_group = 2 * hs * (d + cfg.qkv_bias)  # a K/V group: its rows of K and V
        left = {n: component(model, n).head_ids.tolist() for n in self._names}  # type: ignore[union-attr]
        removed = [f"{n}.h{j}" for i, n in enumerate(self._names) for j in range(n_heads) if self.removed[i, j]]
        size = self.group_sizes(model)
        groups_gone = sum(
            sum(1 for g in range(cfg.kv_heads) if all(j not in left[n] for j in range(g * size, (g + 1) * size)))
            for n in self._names
        )
        importance = {
            f"{n}.h{j}": float(self.importance[i, j])
            for i, n in enumerate(self._names)
            for j in range(n_heads)
            if not math.isnan(float(self.importance[i, j]))
        }
        return {
            "sparsity": {  # for this pruner: the fraction of heads removed
                "overall": len(removed) / self.removed.numel(),
                "per_component": {n: 1.0 - len(left[n]) / n_heads for n in self._names},
            },
            "params": {  # removed heads are gone from the model: `total` counts what is left
                "total": total,
                "remaining": total,
                "removed": len(removed) * per_query + groups_gone * per_group,
                "before_pruning": total + len(removed) * per_query + groups_gone * per_group,
            },
            "memory": {"model": {"dense_bytes": 4 * total}},
            "heads": {
                "total": self.removed.numel(),
                "removed": removed,
                "remaining": left,
                "importance": importance,  # normalised I_h at pruning time
                "types": list(self.types),
                "unit": self.unit,  # what `sparsity` counted: query heads, or K/V groups with their heads
                "criterion": criterion_name(self.criterion),
                "groups_removed": groups_gone,
            },
        }
