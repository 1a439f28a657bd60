"""`pruner=structured`: make the model smaller for real, by width (attention heads and feed-forward neurons) or by
depth (whole layers), as Minitron (Muralidharan et al. 2024), Sheared-LLaMA, Kwon et al. (2022) and ShortGPT
(Men et al. 2024) do; recovery is the fine-tuning round, with distillation from the unpruned model when the task
has `task.distill.teacher` set.

`sparsity` is the fraction of the model's cost removed, by `budget`: `params` (all of the model's parameters,
embeddings included), `stack_params` (the parameters of the layer stacks: Kaplan et al.'s non-embedding count, what a
small model with a large vocabulary can actually lose) or `flops` (forward FLOPs per token at `flops_context` tokens,
prunelab.models.cost).

structure=width   every feed-forward neuron and attention head is scored by `criterion` on `importance_batches`
                  batches of `importance_split`: `activation` (Minitron: mean |activation| of a neuron, mean L2 norm
                  of a head's output) or `taylor` (E_x |∂L/∂ξ| of a gate on the unit; Michel et al.'s I_h for heads).
                  The same fraction f of the neurons and of the heads (of the `units` listed) goes, f chosen so that
                  the units' cost is `sparsity` of the model's; `scope=per_layer` takes f of every component (uniform
                  widths: a Hugging Face export gets a smaller `intermediate_size`), `scope=global` ranks each kind of
                  unit across layers (scores normalised by their layer's L2 norm, as Michel et al. do for heads). At
                  least one unit of each component is kept.
structure=depth   whole layers are scored by `criterion`: block_influence (Men et al. 2024: 1 - cos of the residual
                  stream before and after the layer; pre-norm models; one forward pass) or contribution (Wang & Tu
                  2020, Eq. 1: the task score's drop when each sub-layer is zeroed, summed per layer; an evaluation
                  per sub-layer; ranked before Eq. 1's clip at 10% of the baseline, which would tie most layers of
                  a decoder LM), and removed, least important first, as many as bring the removed cost closest to
                  `sparsity` (at least one layer is kept).

`criterion` is a built-in's name or a criterion object (`pruner.criterion={_target_: ...}`, prunelab.criteria.base): a
WidthCriterion for width, a BlockCriterion for depth, handed the batches (and, if it reads the task's score, the
scorer and the validation data) by this pruner; results.json names it (a built-in's name, or its class path).

Rounds (each a `trainer.fit`): 0 dense (trained, or evaluated only when the run starts from `ckpt=` or an imported
checkpoint), 1 pruned (evaluated as cut), 2 `finetune_steps` > 0 steps of recovery: `recovery=finetune` trains the
pruned weights (stage "fine-tuned"); `recovery=scratch` trains the same smaller architecture from a fresh
initialisation (stage "from scratch": the baseline that prune-and-recover must beat at equal compute). results.json's
`structured` says what was removed and what the model costs before and after, measured on the model itself.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunelab.criteria.base import BlockCriterion, WidthCriterion, block_scores, criterion_name, resolve
from prunelab.criteria.components import BLOCK_CRITERIA
from prunelab.criteria.width import WIDTH_CRITERIA
from prunelab.distributed import from_rank_zero
from prunelab.errors import UserError
from prunelab.models.addressing import component, component_names
from prunelab.models.cost import cost, stack_flops
from prunelab.models.surgery import prune_heads, prune_neurons, remove_components
from prunelab.models.transformer import FeedForward, MultiHeadAttention
from prunelab.pruning.base import Pruner
from prunelab.pruning.components import warn_if_bounded

log = logging.getLogger("prunelab")
STAGES = ("dense", "pruned", "fine-tuned")
RECOVERIES = ("finetune", "scratch")
STRUCTURES = ("width", "depth")
BUDGETS = ("params", "stack_params", "flops")
KEYS = {"params": "params", "stack_params": "stack_params", "flops": "flops_per_token"}
SCOPES = ("per_layer", "global")
UNITS = ("heads", "neurons")


def unit_cost(module: nn.Module, budget: str, context: int) -> int:
    """What removing one unit (a neuron of a feed-forward, a query head of an attention) saves, by `budget`: its rows
    of the projections that read the stream (fc1 and fc3; Q, and K and V unless grouped-query attention shares them,
    whose K/V rows go only with a whole group), its columns of the output projection, its biases, and for FLOPs its
    share of the attention products at `context`."""
    d = module.fc1.in_features if isinstance(module, FeedForward) else module.out_proj.out_features
    if isinstance(module, FeedForward):
        reads = 2 if module.fc3 is not None else 1  # SwiGLU: a row of fc1 and one of fc3
        bias = reads if module.fc1.bias is not None else 0
        return 2 * (reads + 1) * d if budget == "flops" else (reads + 1) * d + bias
    assert isinstance(module, MultiHeadAttention)
    hs = module.head_dim
    reads = (0 if module.uniform else 1) + (0 if module.grouped else (1 if module.uniform else 2))  # Q, K, V rows
    if budget == "flops":
        attention = (1 if module.uniform else 2) * 2 * hs * context
        return 2 * (reads + 1) * hs * d + attention
    bias = reads * hs if module.v_proj.bias is not None else 0
    return (reads + 1) * hs * d + bias


@torch.no_grad()
def fresh_weights(model: nn.Module) -> None:
    """A fresh initialisation of the model as it now is (smaller matrices included): its own reset_parameters for
    the matrices and embeddings, then every norm's weight at 1 and every bias at 0."""
    model.reset_parameters()  # type: ignore[operator]
    for name, p in model.named_parameters():
        if p.dim() == 1:
            p.fill_(0.0 if name.endswith("bias") else 1.0)
    if getattr(model, "pads", False):
        model.embed.weight[model.cfg.pad_id].zero_()  # type: ignore[index,union-attr]


def removed_layers(model: nn.Module) -> list[str]:
    """Stack layers (`dec.3`) whose every sub-layer is gone."""
    return [
        f"{side}.{i}"
        for side in ("enc", "dec")
        for i, layer in enumerate(getattr(model, side))
        if all(getattr(layer, k) is None for k in layer.kinds)
    ]


class StructuredPruner(Pruner):
    def __init__(
        self,
        sparsity: float,
        structure: str = "width",
        criterion: str | WidthCriterion | BlockCriterion = "activation",
        budget: str = "params",
        scope: str = "per_layer",
        units: Sequence[str] = UNITS,
        finetune_steps: int = 0,
        recovery: str = "finetune",
        importance_batches: int = 16,
        importance_split: str = "train",
        flops_context: int = 128,
    ):
        super().__init__()
        checks = (
            (structure, STRUCTURES, "pruner.structure"),
            (budget, BUDGETS, "pruner.budget"),
            (scope, SCOPES, "pruner.scope"),
            (importance_split, ("train", "valid"), "pruner.importance_split"),
            (recovery, RECOVERIES, "pruner.recovery"),
        )
        for value, allowed, key in checks:
            if value not in allowed:
                raise UserError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        builtins, kind = (BLOCK_CRITERIA, BlockCriterion) if structure == "depth" else (WIDTH_CRITERIA, WidthCriterion)
        chosen = resolve(criterion, builtins, kind, f"pruner.criterion for structure={structure}")  # type: ignore[arg-type]
        self.units = tuple(units)
        if not self.units or set(self.units) - set(UNITS):
            raise UserError(f"pruner.units must be a non-empty subset of {list(UNITS)}, got {units}")
        if not 0.0 <= sparsity < 1.0:
            raise UserError(f"sparsity must be in [0, 1), got {sparsity}")
        if finetune_steps < 0:
            raise UserError(f"pruner.finetune_steps must be >= 0, got {finetune_steps}")
        if importance_batches < 1:
            raise UserError(f"pruner.importance_batches must be >= 1, got {importance_batches}")
        if flops_context < 1:
            raise UserError(f"pruner.flops_context must be >= 1, got {flops_context}")
        self.sparsity, self.structure, self.criterion = sparsity, structure, chosen
        self.budget, self.scope, self.finetune_steps = budget, scope, finetune_steps
        self.importance_batches, self.importance_split, self.flops_context = (
            importance_batches,
            importance_split,
            flops_context,
        )
        self.recovery = recovery
        if recovery == "scratch" and finetune_steps < 1:
            raise UserError("pruner.recovery=scratch trains the smaller model from scratch: set pruner.finetune_steps")
        self.rounds = 3 if finetune_steps > 0 else 2
        self._datamodule: Any = None

    # --- lifecycle ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        # before any evaluation or training: units are scored after the dense round (block influence: pre-norm only)
        getattr(self.criterion, "require", lambda model: None)(model)
        if not hasattr(self, "cost_before"):  # buffers: a resumed or reloaded run still reports the dense cost
            self.register_buffer("cost_before", torch.zeros(len(KEYS), dtype=torch.long))  # by KEYS' order

    def use_data(self, datamodule: object, task: Any = None) -> None:
        self._datamodule = datamodule
        # the task's scorer gives Wang & Tu's contribution (a criterion that needs_scorer); its bound method, not the
        # task itself, which owns this pruner (an nn.Module attribute would register the task as a submodule: a cycle)
        self._own_scorer = task.own_scorer if task is not None else None

    @property
    def _unit_budget(self) -> str:
        return "flops" if self.budget == "flops" else "params"

    def round_steps(self, round_idx: int, max_steps: int, pretrained: bool) -> int:
        if round_idx == 0:
            return 0 if pretrained else max_steps
        return self.finetune_steps if round_idx == 2 else 0

    def stage(self, round_idx: int) -> str:
        return "from scratch" if round_idx == 2 and self.recovery == "scratch" else STAGES[round_idx]

    def on_round_start(self, model: nn.Module, round_idx: int) -> None:
        if round_idx == 2 and self.recovery == "scratch":
            fresh_weights(model)

    @property
    def sparsity_means(self) -> str:
        cost = {
            "params": "parameters (embeddings included)",
            "stack_params": "layer stacks' parameters",
            "flops": "forward FLOPs per token",
        }[self.budget]
        return f"the fraction of the model's {cost} removed, by {self.structure} ({self.budget} budget)"

    def round_sparsity(self, round_idx: int) -> float:
        return 0.0 if round_idx == 0 else self.sparsity

    def on_round_end(self, model: nn.Module, round_idx: int) -> None:
        if round_idx != 0:
            return
        dense = cost(model, self.flops_context)  # type: ignore[arg-type]
        self.cost_before.copy_(torch.tensor([dense[k] for k in KEYS.values()]))
        plan = from_rank_zero(self.choose(model))  # every rank removes rank 0's choice
        self.apply(model, plan)

    # --- the method ---------------------------------------------------------------------------------
    def _batches(self) -> list[dict]:
        if self._datamodule is None:
            raise RuntimeError("StructuredPruner.use_data(datamodule) must be called before pruning")
        loader = (
            self._datamodule.train_dataloader()
            if self.importance_split == "train"
            else self._datamodule.val_dataloader()
        )
        out = []
        for b in loader:
            out.append(b)
            if len(out) >= self.importance_batches:
                break
        return out

    def target(self, model: nn.Module) -> float:
        """The cost to remove: `sparsity` of the model's parameters or FLOPs per token."""
        c = cost(model, self.flops_context)  # type: ignore[arg-type]
        return self.sparsity * c[KEYS[self.budget]]

    def choose(self, model: nn.Module) -> dict[str, Any]:
        """{"heads": {attention: [original head numbers]}, "neurons": {feed-forward: [...]}, "layers": [...]}."""
        batches = self._batches()
        if self.structure == "depth":
            return {"heads": {}, "neurons": {}, "layers": self.choose_layers(model, batches)}
        return {**self.choose_width(model, batches), "layers": []}

    @property
    def criterion_name(self) -> str:
        """The criterion as results.json and the logs name it."""
        return criterion_name(self.criterion)

    def choose_layers(self, model: nn.Module, batches: list[dict]) -> list[str]:
        if getattr(self.criterion, "needs_scorer", False):
            influence, bounded = self.layer_contributions(model)
        else:
            scored = block_scores(self.criterion(model, batches, layers=True))  # type: ignore[call-arg]
            influence, bounded = scored.ranking, scored.bounded
        present = {n.rsplit(".", 1)[0] for n in component_names(model)}  # type: ignore[arg-type]
        influence = {n: v for n, v in influence.items() if n in present}
        order = sorted(influence, key=lambda n: influence[n])
        target = self.target(model)
        best, best_gap, removed = 0, target, 0.0
        for k, name in enumerate(order[:-1], start=1):  # keep at least one layer
            side, i = name.split(".")
            layer = getattr(model, side)[int(i)]
            if self.budget != "flops":
                removed += sum(p.numel() for p in layer.parameters())
            else:
                removed += stack_flops([layer], self.flops_context)
            if abs(removed - target) < best_gap:
                best, best_gap = k, abs(removed - target)
        log.info("structured: removing %d of %d layers by %s: %s", best, len(order), self.criterion_name, order[:best])
        warn_if_bounded(order[:best], bounded)
        return order[:best]

    def layer_contributions(self, model: nn.Module) -> tuple[dict[str, float], set[str]]:
        """A criterion that reads the task's score (Wang & Tu's contribution: the score's drop when a component is
        zeroed, summed over each layer's sub-layers, as ComponentPruner's granularity=layer), on all the validation
        data: what removal ranks by (for contribution the drops before Eq. 1's clip, which would tie most layers of a
        decoder LM at C) -> ({layer: value}, layers whose value is only a lower bound: BLEU decoding stopped early)."""
        if getattr(self, "_own_scorer", None) is None:
            raise RuntimeError(
                f"StructuredPruner.use_data(datamodule, task) must be called before criterion={self.criterion_name}"
            )
        scorer = self._own_scorer(self._datamodule)
        batches = list(self._datamodule.val_dataloader())
        scored = block_scores(self.criterion(model, batches, layers=True, scorer=scorer))  # type: ignore[call-arg]
        return scored.ranking, scored.bounded

    def choose_width(self, model: nn.Module, batches: list[dict]) -> dict[str, dict[str, list[int]]]:
        kinds = {"heads": MultiHeadAttention, "neurons": FeedForward}
        names = [
            n
            for n in component_names(model)  # type: ignore[arg-type]
            if any(isinstance(component(model, n), kinds[u]) for u in self.units)  # type: ignore[arg-type]
        ]
        scores = self.criterion(model, batches, names)  # type: ignore[call-arg,arg-type]
        modules = {n: component(model, n) for n in names}  # type: ignore[arg-type]
        units = {n: len(s) for n, s in scores.items()}
        removable = sum(units[n] * unit_cost(modules[n], self._unit_budget, self.flops_context) for n in names)
        target = self.target(model)
        fraction = target / removable if removable else math.inf
        most = sum((units[n] - 1) * unit_cost(modules[n], self._unit_budget, self.flops_context) for n in names)
        if target > most:
            total = target / self.sparsity
            raise UserError(
                f"structure=width can remove at most {most / total:.3f} of the model's {self.budget} with "
                f"units={list(self.units)} (every component keeps one unit); sparsity={self.sparsity} asks for more: "
                "lower it, or use structure=depth"
            )
        plan: dict[str, dict[str, list[int]]] = {"heads": {}, "neurons": {}}
        heads = [n for n in names if isinstance(modules[n], MultiHeadAttention)]
        ffs = [n for n in names if isinstance(modules[n], FeedForward)]
        # heads first, at the fraction; the feed-forward neurons (fine-grained) then take what is left of the target,
        # so that rounding to whole heads and K/V groups emptied along the way do not move the total
        plan["heads"] = self._lowest(heads, scores, modules, fraction)
        done = sum(self._removal_cost(modules[n], plan["heads"].get(n, [])) for n in heads)
        if ffs:
            neuron_cost = sum(units[n] * unit_cost(modules[n], self._unit_budget, self.flops_context) for n in ffs)
            plan["neurons"] = self._lowest(ffs, scores, modules, max(0.0, target - done) / neuron_cost)
        log.info(
            "structured: removing %.3f of the %s (%s scope) by %s",
            min(fraction, 1.0),
            " and ".join(self.units),
            self.scope,
            self.criterion_name,
        )
        return plan

    def _lowest(
        self, names: list[str], scores: dict[str, Any], modules: dict[str, nn.Module], fraction: float
    ) -> dict[str, list[int]]:
        """The `fraction` of the units of `names` with the lowest scores, per component (scope=per_layer) or across
        them (scope=global, each component's scores divided by their L2 norm); every component keeps one unit."""
        plan: dict[str, list[int]] = {}
        if self.scope == "per_layer":
            for n in names:
                count = min(len(scores[n]) - 1, round(fraction * len(scores[n])))
                slots = torch.argsort(scores[n], stable=True)[:count].tolist()
                plan[n] = [self._number(modules[n], s) for s in slots]
            return plan
        flat = [
            (float(v), n, slot)
            for n in names
            for s in [scores[n] / scores[n].norm() if scores[n].norm() > 0 else scores[n]]
            for slot, v in enumerate(s.tolist())
        ]
        count = round(fraction * len(flat))
        left = {n: len(scores[n]) for n in names}
        for _, n, slot in sorted(flat, key=lambda t: t[0]):
            if count == 0:
                break
            if left[n] > 1:
                plan.setdefault(n, []).append(self._number(modules[n], slot))
                left[n] -= 1
                count -= 1
        return plan

    def _removal_cost(self, module: nn.Module, heads: list[int]) -> int:
        """What removing `heads` from an attention saves, by the budget: measured on a copy of it (a K/V group emptied
        goes with its last query head)."""
        if not heads:
            return 0
        pruned = copy.deepcopy(module)
        pruned.prune_heads(heads)  # type: ignore[operator]
        if self.budget != "flops":
            return sum(p.numel() for p in module.parameters()) - sum(p.numel() for p in pruned.parameters())
        return stack_flops([module], self.flops_context) - stack_flops([pruned], self.flops_context)

    @staticmethod
    def _number(module: nn.Module, slot: int) -> int:
        """The original number of the unit in `slot` (heads and neurons keep their numbers after removal)."""
        if isinstance(module, FeedForward):
            return module.neuron_numbers()[slot]
        return int(module.head_ids[slot])  # type: ignore[union-attr,index]

    @torch.no_grad()
    def apply(self, model: nn.Module, plan: dict[str, Any]) -> None:
        prune_heads(model, plan["heads"])  # type: ignore[arg-type]
        prune_neurons(model, plan["neurons"])  # type: ignore[arg-type]
        layers = plan["layers"]
        remove_components(
            model,  # type: ignore[arg-type]
            [n for n in component_names(model) if n.rsplit(".", 1)[0] in layers],  # type: ignore[arg-type]
        )

    # --- reporting -----------------------------------------------------------------------------------
    def masked_fraction(self) -> float:
        return 0.0

    @torch.no_grad()
    def report(self, model: nn.Module) -> dict[str, Any]:
        now = cost(model, self.flops_context)  # type: ignore[arg-type]
        before = dict(zip(KEYS.values(), (int(v) for v in self.cost_before.tolist()), strict=True))
        if before["params"] == 0:  # the dense round, before anything was measured
            before = {k: now[k] for k in KEYS.values()}
        gone = {k: 1.0 - now[k] / before[k] if before[k] else 0.0 for k in KEYS.values()}
        widths = {
            n: (m.width if isinstance(m, FeedForward) else m.n_heads)  # type: ignore[union-attr]
            for n in component_names(model)  # type: ignore[arg-type]
            for m in [component(model, n)]  # type: ignore[arg-type]
        }
        return {
            "sparsity": {"overall": gone[KEYS[self.budget]]},
            "params": {"total": now["params"], "remaining": now["params"], "before_pruning": before["params"]},
            "memory": {"model": {"dense_bytes": 4 * now["params"]}},
            "structured": {
                "structure": self.structure,
                "criterion": self.criterion_name,
                "budget": self.budget,  # what `sparsity` is a fraction of
                "scope": self.scope,
                "recovery": self.recovery,
                "units": list(self.units) if self.structure == "width" else ["layers"],
                "target": self.sparsity,
                "params_removed_fraction": gone["params"],  # of all parameters, embeddings included
                "stack_params_removed_fraction": gone["stack_params"],  # of the layer stacks' parameters
                "flops_removed_fraction": gone["flops_per_token"],
                "flops_context": self.flops_context,
                "params": {"before": before["params"], "after": now["params"]},
                "stack_params": {"before": before["stack_params"], "after": now["stack_params"]},
                "flops_per_token": {"before": before["flops_per_token"], "after": now["flops_per_token"]},
                "widths": widths,  # feed-forward neurons and attention heads left per component
                "layers_removed": removed_layers(model),
            },
        }
