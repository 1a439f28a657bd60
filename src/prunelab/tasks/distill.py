"""Knowledge distillation as recovery (`task.distill`): the (pruned) student trains against the output distribution
of an unpruned teacher (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"), optionally
also matching the teacher's hidden states layer by layer (the MSE of TinyBERT, Jiao et al. 2020; Minitron,
Muralidharan et al. 2024, recovers structurally pruned models with both):

    loss = (1 - alpha) * task_loss + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))
           + hidden_weight * mean over the student's kept layers l of MSE(h_s[l], h_t[n(l)])

The KL is averaged over the units the task loss averages over (target tokens that are not padding, predicted tokens,
examples: the task passes its keep mask). T^2 keeps the gradient's size comparable across temperatures: the gradient
of the KL term with respect to a student logit is T * (softmax(z_s / T) - softmax(z_t / T)) / count.

Layers are matched by their number in the ORIGINAL model: n(l) is the teacher's layer with the original number of
the student's layer l (models.surgery.layer_numbers). prunelab never renumbers the layers of a stack, so a student
with layers removed within prunelab (every sub-layer of `enc.{i}` gone) keeps the indices of the others, and a removed
layer is simply not matched. A Hugging Face export does renumber (the removed layers leave the network), and records
the kept layers' original numbers in config.json (`prunelab_kept_layers`), which the import reads back
(`cfg.layer_numbers`): its layer `dec.1` may be the teacher's `dec.3`. A student stack without that record is matched
by index only when it has as many layers as the teacher's; otherwise which teacher layers its layers were cannot be
known, and hidden_weight > 0 is one UserError rather than a match of the wrong layers. Widths (d_model) are never
pruned, so the shapes agree.

The pure functions (`soft_targets`, `kd_loss`, `hidden_loss`, `mix`) hold the mathematics; `Distiller` holds the
teacher and the settings, and the tasks (prunelab.tasks.base.PrunableTask) call it from their training step with
their own logits and keep mask. The teacher is never a submodule of the task: it is in no checkpoint, no state_dict
and no optimizer. The trunk builds the Distiller (prunelab.training.task.build_distiller: `settings` checks
`task.distill`, load_run loads the teacher) and hands it to the task (`use_distiller`).

Floor: tasks (below the task modules; it imports only errors and models.surgery)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunelab.errors import UserError
from prunelab.models.kernels import wide
from prunelab.models.surgery import layer_numbers, recorded_layer_numbers

# task.distill's settings and their defaults (conf/task/*.yaml say the same; teacher None: no distillation)
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"teacher": None, "alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0}
)
STACKS = ("enc", "dec")  # the layer stacks of prunelab's models: encoder, decoder (a classifier: enc; a causal LM: dec)


def settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """`task.distill` with DEFAULTS for what it leaves out; a key that is not a setting is one UserError."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise UserError(f"task.distill.{unknown[0]} is not a distillation setting (one of {', '.join(DEFAULTS)})")
    return {**DEFAULTS, **given}


def soft_targets(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / T) over the last dimension, in float32 at least: Hinton et al.'s softened distribution (T > 1
    spreads the probability over the non-argmax classes, whose ratios carry the teacher's "dark knowledge")."""
    return torch.softmax(wide(logits) / temperature, dim=-1)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, keep_mask: Tensor | None = None
) -> Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), the KL summed over the last (class) dimension and averaged
    over the positions where `keep_mask` (the logits' shape without the last dimension) is True, or over every
    position when it is None (Hinton et al. 2015, eq. 2 and the T^2 factor of section 2). Positions not kept add
    nothing to the value or to the gradient, whatever their logits hold. Computed in float32 at least."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} != teacher logits {tuple(teacher_logits.shape)}"
        )
    s, t = wide(student_logits), wide(teacher_logits)
    if keep_mask is not None:
        drop = ~keep_mask.bool().unsqueeze(-1)
        s, t = s.masked_fill(drop, 0.0), t.masked_fill(drop, 0.0)  # what is not kept never enters the softmax
    log_ps = F.log_softmax(s / temperature, dim=-1)
    log_pt = F.log_softmax(t / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # per position
    scale = temperature * temperature
    if keep_mask is None:
        return kl.mean() * scale
    keep = keep_mask.to(kl.dtype)
    return (kl * keep).sum() / keep.sum().clamp(min=1.0) * scale


def hidden_loss(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
) -> Tensor:
    """The mean over the layers of `student` ({address: output (B, T, C)}) of the mean squared error between the
    student's and the teacher's output under the same key (TinyBERT's hidden-state loss; the Distiller keys the
    teacher's outputs by the student layer each is matched to, layer_pairs). `masks`:
    per stack (`enc`, `dec`), the positions (B, T) that count (padding does not); the MSE of a layer is then the
    mean over the kept positions' elements. No layers: 0."""
    terms = []
    for name, hs in student.items():
        ht = teacher[name]
        if hs.shape != ht.shape:
            raise ValueError(f"layer {name}: student output {tuple(hs.shape)} != teacher output {tuple(ht.shape)}")
        sq = (wide(hs) - wide(ht)).pow(2).mean(-1)  # (B, T): mean over the width
        keep = masks.get(name.split(".")[0]) if masks else None
        if keep is None:
            terms.append(sq.mean())
        else:
            k = keep.to(sq.dtype)
            terms.append((sq * k).sum() / k.sum().clamp(min=1.0))
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()


def mix(task_loss: Tensor, kd: Tensor, alpha: float) -> Tensor:
    """(1 - alpha) * task_loss + alpha * kd: exactly task_loss at alpha = 0 and exactly kd at alpha = 1."""
    if alpha == 0.0:
        return task_loss
    if alpha == 1.0:
        return kd
    return (1.0 - alpha) * task_loss + alpha * kd


def stack_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of a prunelab model's stacks by address, `enc.{i}` and `dec.{i}` (the ModuleLists `model.enc` and
    `model.dec`: both for the encoder-decoder, `enc` for the classifier, `dec` for the causal language model)."""
    layers: dict[str, nn.Module] = {}
    for stack in STACKS:
        modules = getattr(model, stack, None)
        if isinstance(modules, nn.ModuleList):
            layers.update({f"{stack}.{i}": layer for i, layer in enumerate(modules)})
    return layers


def is_removed(layer: nn.Module) -> bool:
    """Whether a stack layer was removed: every sub-layer of a prunelab Layer (its `kinds`) is None, or a layer of
    another kind has no parameters. It passes its input on unchanged: nothing to match."""
    kinds = getattr(layer, "kinds", None)
    if kinds:
        return all(getattr(layer, kind, None) is None for kind in kinds)
    return next(layer.parameters(), None) is None


def kept_layers(model: nn.Module) -> dict[str, nn.Module]:
    """stack_layers(model) without the removed ones."""
    return {name: layer for name, layer in stack_layers(model).items() if not is_removed(layer)}


def layer_pairs(student: nn.Module, teacher: nn.Module, source: str | None = None) -> dict[str, str]:
    """{student layer address: teacher layer address} for the student's kept layers: the teacher's layer with the
    same original number (layer_numbers; a stack without a record is numbered by index). A student stack without a
    record and with another number of layers than the teacher's cannot be matched (a renumbered export without
    `prunelab_kept_layers`, or another model): one UserError, as is a number the teacher has no layer for."""
    kept = kept_layers(student)
    s_numbers, t_numbers = layer_numbers(student), layer_numbers(teacher)
    recorded = recorded_layer_numbers(student)
    where = f"task.distill.teacher={source}: " if source else ""
    pairs: dict[str, str] = {}
    for stack in STACKS:
        s_len, t_len = len(s_numbers[stack]), len(t_numbers[stack])
        if not any(name.startswith(f"{stack}.") for name in kept):
            continue
        if stack not in recorded and s_len != t_len:
            raise UserError(
                f"{where}the student's {stack} stack has {s_len} layers and the teacher's {t_len}, and nothing records "
                f"which teacher layers the student's are (a Hugging Face export by prunelab records them in "
                f"config.json's prunelab_kept_layers): hidden_weight > 0 cannot match them; set hidden_weight=0"
            )
        # without a record, equal stacks: index i is number i on both sides when neither was renumbered, and the
        # same layer of the same-shaped network otherwise
        teacher_at = {n: i for i, n in enumerate(t_numbers[stack] if stack in recorded else range(t_len))}
        for i, n in enumerate(s_numbers[stack]):
            name = f"{stack}.{i}"
            if name not in kept:
                continue
            if n not in teacher_at:
                raise UserError(
                    f"{where}the student's layer {name} is layer {n} of the original {stack} stack, which the teacher "
                    f"(numbered {t_numbers[stack]}) does not have (hidden_weight > 0 needs a teacher with the "
                    "student's layers)"
                )
            pairs[name] = f"{stack}.{teacher_at[n]}"
    return pairs


@contextmanager
def recording(layers: Mapping[str, nn.Module]) -> Iterator[dict[str, Tensor]]:
    """Within the block, {address: the output of that layer's latest forward} for `layers` (forward hooks, removed
    on exit)."""
    outputs: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
        def store(module: nn.Module, args: Any, output: Tensor) -> None:
            outputs[name] = output

        return store

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class Distiller:
    """The teacher of `task.distill` and its settings. The teacher (`teacher`, an nn.Module) is kept in this plain
    object, never registered under the task: it stays in eval mode with requires_grad off, out of the task's
    state_dict, checkpoints and optimizer, and follows the student's device and dtype (`place`).

    A training step: the task records the student's forward under `watch(student)` (its kept layers' outputs, only
    with hidden_weight > 0), then calls `loss(task_loss, student_logits, forward, keep, masks)`, `forward` running a
    model on the step's batch as the task runs its own model; the teacher runs on the same batch under no_grad (and
    under the autocast the step is in)."""

    def __init__(
        self,
        teacher: nn.Module,
        alpha: float = DEFAULTS["alpha"],
        temperature: float = DEFAULTS["temperature"],
        hidden_weight: float = DEFAULTS["hidden_weight"],
        source: str | None = None,
    ):
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"task.distill.alpha must be in [0, 1], got {alpha}")
        if not temperature > 0.0:
            raise UserError(f"task.distill.temperature must be > 0, got {temperature}")
        if not hidden_weight >= 0.0:
            raise UserError(f"task.distill.hidden_weight must be >= 0, got {hidden_weight}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.hidden_weight = float(alpha), float(temperature), float(hidden_weight)
        self.source = source  # where the teacher came from (results.json)
        self.student_states: dict[str, Tensor] = {}  # the student's kept layers' outputs of the latest watch()
        self.pairs: dict[str, str] = {}  # the teacher's layer matched to each of them (layer_pairs)
        self._placed: tuple[torch.device, torch.dtype] | None = None

    def check_student(self, student: nn.Module) -> None:
        """A teacher of another kind of model than the student (a translation model for a classifier, ...) is one
        UserError (the shapes of the logits are compared at the first training step), and so, with hidden_weight > 0,
        is a student whose layers cannot be matched to the teacher's (layer_pairs)."""
        mine, theirs = getattr(self.teacher, "kind", None), getattr(student, "kind", None)
        if mine != theirs:
            raise UserError(
                f"task.distill.teacher={self.source}: a {mine} model cannot teach a {theirs} model "
                "(the teacher must be trained on the same data)"
            )
        if self.hidden_weight:
            layer_pairs(student, self.teacher, self.source)

    def report(self) -> dict[str, Any]:
        """What results.json records of the distillation."""
        return {
            "teacher": self.source,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "hidden_weight": self.hidden_weight,
        }

    def place(self, student: nn.Module) -> None:
        """Move the teacher to the student's device and floating-point dtype (at fit start; then a no-op unless the
        student moved), in eval mode."""
        p = next(student.parameters(), None)
        if p is None:
            return
        where = (p.device, p.dtype)
        if where != self._placed:
            self.teacher.to(device=p.device, dtype=p.dtype)
            self._placed = where
        if self.teacher.training:
            self.teacher.eval()

    @contextmanager
    def watch(self, student: nn.Module) -> Iterator[None]:
        """Record the student's kept layers' outputs during the block into `student_states`, and the teacher's layer
        each is matched to into `pairs` (with hidden_weight > 0; otherwise nothing is recorded)."""
        if not self.hidden_weight:
            self.student_states, self.pairs = {}, {}
            yield
            return
        self.pairs = layer_pairs(student, self.teacher, self.source)
        layers = stack_layers(student)
        with recording({name: layers[name] for name in self.pairs}) as states:
            yield
        self.student_states = states

    def teacher_outputs(
        self, forward: Callable[[nn.Module], Tensor], pairs: Mapping[str, str]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The teacher's logits of `forward(teacher)`, under no_grad, and the outputs of its layers `pairs` names
        ({student layer: teacher layer}), each under the student layer's address."""
        mine = stack_layers(self.teacher)
        with torch.no_grad(), recording({name: mine[theirs] for name, theirs in pairs.items()}) as states:
            logits = forward(self.teacher)
        return logits, states

    def loss(
        self,
        task_loss: Tensor,
        student_logits: Tensor,
        forward: Callable[[nn.Module], Tensor],
        keep: Tensor | None = None,
        masks: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The step's loss, mix(task_loss, kd_loss) (+ hidden_weight * hidden_loss), and its parts for the logs
        (`kd_loss`, and `hidden_loss` with hidden_weight > 0; detached). `forward(model)`: that model's logits on the
        step's batch; `keep`: the positions of the logits the task loss averages over; `masks`: per stack, the
        positions of the layer outputs that count."""
        states, self.student_states = self.student_states, {}
        teacher_logits, teacher_states = self.teacher_outputs(forward, {n: self.pairs[n] for n in states})
        if teacher_logits.shape != student_logits.shape:
            raise UserError(
                f"task.distill.teacher={self.source}: the teacher's logits have shape {tuple(teacher_logits.shape)}, "
                f"the student's {tuple(student_logits.shape)}: the teacher must be trained on the same data "
                "(vocabulary and labels)"
            )
        kd = kd_loss(student_logits, teacher_logits, self.temperature, keep)
        total = mix(task_loss, kd, self.alpha)
        parts = {"kd_loss": kd.detach()}
        if self.hidden_weight:
            mismatched = [n for n in states if states[n].shape != teacher_states[n].shape]
            if mismatched:
                n = mismatched[0]
                raise UserError(
                    f"task.distill.teacher={self.source}: layer {self.pairs[n]} outputs "
                    f"{tuple(teacher_states[n].shape)} in the teacher but {n} {tuple(states[n].shape)} in the student "
                    "(hidden_weight > 0 needs equal widths)"
                )
            hidden = hidden_loss(states, teacher_states, masks).to(total.device)
            total = total + self.hidden_weight * hidden
            parts["hidden_loss"] = hidden.detach()
        return total, parts
