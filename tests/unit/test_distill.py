"""Knowledge distillation (prunelab.tasks.distill, `task.distill`): the KD term against hand computations (soft
targets, the KL summed by brute force, its gradient), its mixing with the task loss, hidden-state matching with removed
layers, each student layer matched to the teacher's of the same original number (or refused where that cannot be
known), and the teacher kept out of the task (state_dict, optimizer) — through the three tasks' real training steps."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from prunelab.data.tokenizer import WordTokenizer
from prunelab.errors import UserError
from prunelab.models import build_classifier, build_transformer
from prunelab.models.causal_lm import IGNORE, build_causal_lm
from prunelab.pruning import NoPruner
from prunelab.tasks import ClassificationTask, LanguageModelingTask, TranslationTask, distill
from prunelab.tasks.distill import Distiller, hidden_loss, kd_loss, kept_layers, soft_targets
from prunelab.training.budget import StepBudget
from prunelab.training.task import build_distiller

VOCAB = 24
TOKENIZER = WordTokenizer(["a", "b"])  # pad id 0: all the translation task reads from it in training


def nmt(seed: int = 0, vocab: int = VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_transformer(vocab_size=vocab, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dec_layers=2, dropout=0.0)


def nmt_batch() -> dict[str, torch.Tensor]:
    """Three sentence pairs, two of them padded on both sides (pad = 0)."""
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, VOCAB, (3, 6), generator=g)
    src[1, 4:] = 0
    src[2, 2:] = 0
    tgt = torch.randint(4, VOCAB, (3, 6), generator=g)
    tgt[0, 0] = 1
    tgt_in, tgt_out = tgt[:, :-1].clone(), tgt[:, 1:].clone()
    tgt_in[1, 3:], tgt_out[1, 3:] = 0, 0
    tgt_in[2, 1:], tgt_out[2, 1:] = 0, 0
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, "n_tokens": 0}


def translation_task(teacher: torch.nn.Module | None, student: torch.nn.Module | None = None, **settings: Any):
    """A TranslationTask whose training_step reports (loss, logged parts) instead of logging (no Trainer here)."""
    task = TranslationTask(student or nmt(), NoPruner(), TOKENIZER, label_smoothing=0.1)
    if teacher is not None:
        task.distiller = Distiller(teacher, **settings)
    return with_log_record(task)


def with_log_record(task: Any) -> Any:
    task.logged = []
    task.log_training_step = lambda loss, batch, parts=None: task.logged.append(dict(parts or {}))
    return task.train()


def softmax_by_hand(z: torch.Tensor, T: float) -> torch.Tensor:
    e = torch.exp((z - z.max(-1, keepdim=True).values) / T)
    return e / e.sum(-1, keepdim=True)


# --- the pure functions -------------------------------------------------------------------------------------------
def test_soft_targets_are_the_softmax_at_temperature() -> None:
    z = torch.randn(3, 4, 7, dtype=torch.float64) * 3
    for T in (1.0, 2.0, 4.5):
        expected = torch.exp(z / T) / torch.exp(z / T).sum(-1, keepdim=True)
        torch.testing.assert_close(soft_targets(z, T), expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(soft_targets(z, 1.0), soft_targets(z, 4.5))  # the temperature does soften
    assert soft_targets(z.to(torch.bfloat16), 2.0).dtype == torch.float32  # computed in float32 at least


def brute_force_kd(zs: torch.Tensor, zt: torch.Tensor, T: float, keep: torch.Tensor) -> float:
    """T^2 / count * sum over kept positions of sum_v p_t log(p_t / p_s), element by element."""
    total, count = 0.0, 0
    for b in range(zs.size(0)):
        for t in range(zs.size(1)):
            if not keep[b, t]:
                continue
            count += 1
            ps = softmax_by_hand(zs[b, t], T).tolist()
            pt = softmax_by_hand(zt[b, t], T).tolist()
            total += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    return total * T * T / count


def test_kd_loss_is_the_kl_summed_by_hand_over_kept_positions_only() -> None:
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 5, 6, generator=g, dtype=torch.float64), torch.randn(2, 5, 6, generator=g).double()
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    T = 3.0
    value = kd_loss(zs, zt, T, keep)
    assert float(value) == pytest.approx(brute_force_kd(zs, zt, T, keep), rel=1e-12)
    assert float(value) > 0.05
    # garbage at the masked positions (huge, and different in student and teacher) changes nothing
    for fill in (1e4, -3e4):
        zs2, zt2 = zs.clone(), zt.clone()
        zs2[~keep] = fill * torch.randn(int((~keep).sum()), 6, generator=g, dtype=torch.float64)
        zt2[~keep] = -fill
        assert float(kd_loss(zs2, zt2, T, keep)) == pytest.approx(float(value), rel=1e-12)
    # no mask: every position counts
    everything = torch.ones_like(keep)
    assert float(kd_loss(zs, zt, T)) == pytest.approx(brute_force_kd(zs, zt, T, everything), rel=1e-12)
    # per example (a classifier's logits, (B, classes)): the mean over examples
    assert float(kd_loss(zs[:, 0], zt[:, 0], T)) == pytest.approx(brute_force_kd(zs[:, :1], zt[:, :1], T, keep[:, :1]))


def test_kd_gradient_is_T_times_the_difference_of_the_soft_targets() -> None:
    g = torch.Generator().manual_seed(1)
    zs = torch.randn(2, 4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    zt = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    T, count = 2.5, int(keep.sum())
    kd_loss(zs, zt, T, keep).backward()
    expected = T * (softmax_by_hand(zs.detach(), T) - softmax_by_hand(zt, T)) / count * keep[..., None]
    torch.testing.assert_close(zs.grad, expected, rtol=1e-10, atol=1e-14)
    # and by central finite differences, at a kept and at a masked position
    for where in ((0, 1, 3), (1, 3, 2)):
        h = 1e-6
        up, down = zs.detach().clone(), zs.detach().clone()
        up[where] += h
        down[where] -= h
        numeric = (kd_loss(up, zt, T, keep) - kd_loss(down, zt, T, keep)) / (2 * h)
        assert float(numeric) == pytest.approx(float(zs.grad[where]), abs=1e-8)


def test_hidden_loss_is_the_mean_over_layers_of_the_masked_mse() -> None:
    g = torch.Generator().manual_seed(2)
    s = {"enc.0": torch.randn(2, 3, 4, generator=g), "dec.1": torch.randn(2, 5, 4, generator=g)}
    t = {k: v + torch.randn(v.shape, generator=g) for k, v in s.items()}
    masks = {"enc": torch.tensor([[1, 1, 0], [1, 1, 1]]).bool(), "dec": torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]).bool()}
    per_layer = []
    for name in s:
        m = masks[name[:3]]
        per_layer.append(((s[name] - t[name]) ** 2)[m].mean())
    assert float(hidden_loss(s, t, masks)) == pytest.approx(float(sum(per_layer) / 2), rel=1e-6)
    assert float(hidden_loss(s, {k: v.clone() for k, v in s.items()}, masks)) == 0.0
    assert float(hidden_loss({}, t)) == 0.0


# --- through the tasks' training steps ----------------------------------------------------------------------------
def test_teacher_equal_to_the_student_gives_zero_kd_and_zero_gradient() -> None:
    student = nmt()
    task = translation_task(copy.deepcopy(student), student, alpha=1.0, temperature=2.0, hidden_weight=1.0)
    loss = task.training_step(nmt_batch(), 0)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-7
    assert abs(float(task.logged[-1]["kd_loss"])) < 1e-7 and abs(float(task.logged[-1]["hidden_loss"])) < 1e-7
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert len(grads) > 10 and max(float(gr.abs().max()) for gr in grads) < 1e-7
    # the same step with one weight of the student changed: both are clearly non-zero
    student.zero_grad()
    with torch.no_grad():
        student.dec[1].ff.fc1.weight.mul_(1.5)  # (a constant added would vanish against the LayerNorm)
    loss = task.training_step(nmt_batch(), 0)
    loss.backward()
    assert float(task.logged[-1]["kd_loss"]) > 1e-4 and float(task.logged[-1]["hidden_loss"]) > 1e-4
    assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) > 1e-4


def test_alpha_mixes_the_task_loss_and_the_kd_term_over_non_pad_tokens() -> None:
    batch, T = nmt_batch(), 2.0
    keep = batch["tgt_out"] != TOKENIZER.pad_id
    assert not keep.all()  # the batch has padding, so the unit of the average matters
    student, teacher = nmt(0), nmt(1)
    with torch.no_grad():
        zs, zt = student(batch["src"], batch["tgt_in"]), teacher(batch["src"], batch["tgt_in"])
    plain = translation_task(None, student)
    task_loss = plain.training_step(batch, 0).detach()
    assert plain.logged[-1] == {}  # nothing extra is logged without a teacher
    kd = kd_loss(zs, zt, T, keep)
    assert float(kd) != pytest.approx(float(kd_loss(zs, zt, T)), rel=1e-3)  # padding excluded: a different value

    only_task = translation_task(teacher, student, alpha=0.0, temperature=T)
    assert torch.equal(only_task.training_step(batch, 0).detach(), task_loss)  # exactly the task loss
    assert float(only_task.logged[-1]["kd_loss"]) == pytest.approx(float(kd), rel=1e-6)  # still logged
    only_kd = translation_task(teacher, student, alpha=1.0, temperature=T)
    assert float(only_kd.training_step(batch, 0).detach()) == pytest.approx(float(kd), rel=1e-6)
    mixed = translation_task(teacher, student, alpha=0.3, temperature=T)
    assert float(mixed.training_step(batch, 0).detach()) == pytest.approx(float(0.7 * task_loss + 0.3 * kd), rel=1e-6)

    # alpha = 0: the gradient is the task loss's alone; alpha = 1: the KD term's alone
    for alpha, reference in ((0.0, lambda: plain.training_step(batch, 0)), (1.0, None)):
        student.zero_grad()
        translation_task(teacher, student, alpha=alpha, temperature=T).training_step(batch, 0).backward()
        got = [p.grad.clone() for p in student.parameters()]
        student.zero_grad()
        if reference is None:
            kd_loss(student(batch["src"], batch["tgt_in"]), zt, T, keep).backward()
        else:
            reference().backward()
        for a, b in zip(got, [p.grad for p in student.parameters()], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_classification_distils_per_example() -> None:
    torch.manual_seed(0)
    student = build_classifier(num_classes=3, vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dropout=0)
    torch.manual_seed(1)
    teacher = build_classifier(num_classes=3, vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dropout=0)
    src = torch.randint(4, VOCAB, (5, 6), generator=torch.Generator().manual_seed(0))
    src[:, 0], src[1, 3:] = 1, 0
    batch = {"src": src, "label": torch.tensor([0, 1, 2, 1, 0]), "n_tokens": 0}
    task = with_log_record(ClassificationTask(student, NoPruner(), labels=["x", "y", "z"]))
    task.distiller = Distiller(teacher, alpha=1.0, temperature=3.0, hidden_weight=0.5)
    loss = task.training_step(batch, 0)
    with torch.no_grad():
        zs, zt = student(src), teacher(src)
    kd = brute_force_kd(zs[:, None], zt[:, None], 3.0, torch.ones(5, 1, dtype=torch.bool))
    assert float(task.logged[-1]["kd_loss"]) == pytest.approx(kd, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(kd + 0.5 * float(task.logged[-1]["hidden_loss"]), rel=1e-5)
    assert float(task.logged[-1]["hidden_loss"]) > 0


def test_language_modeling_distils_over_predicted_tokens() -> None:
    def lm(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build_causal_lm(vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, dec_layers=2, dropout=0.0)

    student, teacher = lm(0), lm(1)
    src = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    target = torch.roll(src, -1, 1)
    target[:, :2] = IGNORE  # context that is not scored
    target[1, 5:] = IGNORE  # padding
    batch = {"src": src, "target": target, "n_tokens": 0}
    task = with_log_record(LanguageModelingTask(student, NoPruner(), tokenizer=None))  # type: ignore[arg-type]
    plain = task.training_step(batch, 0).detach()
    assert float(plain) == pytest.approx(task_nll(student, batch), rel=1e-6)  # the loss it had before distillation
    task.distiller = Distiller(teacher, alpha=0.5, temperature=2.0)
    loss = task.training_step(batch, 0)
    with torch.no_grad():
        kd = brute_force_kd(student(src), teacher(src), 2.0, target != IGNORE)
    assert float(task.logged[-1]["kd_loss"]) == pytest.approx(kd, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(0.5 * float(plain) + 0.5 * kd, rel=1e-5)


def task_nll(model: Any, batch: dict[str, torch.Tensor]) -> float:
    """The mean NLL of the scored targets, from CausalLM.token_nll (the task's loss before the refactor)."""
    with torch.no_grad():
        return float(model.token_nll(batch).sum() / (batch["target"] != IGNORE).sum())


def test_hidden_states_skip_the_layers_the_student_removed() -> None:
    teacher = nmt(0)
    student = copy.deepcopy(teacher)
    student.enc[0].remove("sa")
    student.enc[0].remove("ff")  # the whole layer gone; the others keep their indices
    student.dec[1].remove("ff")  # one component gone: the layer is still matched
    assert list(kept_layers(student)) == ["enc.1", "dec.0", "dec.1"]
    batch = nmt_batch()
    task = translation_task(teacher, student, alpha=0.0, hidden_weight=2.0)
    loss = task.training_step(batch, 0)

    def outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(lambda m, a, out, name=f"{stack}.{i}": got.__setitem__(name, out.detach()))
            for stack in ("enc", "dec")
            for i, layer in enumerate(getattr(model, stack))
        ]
        with torch.no_grad():
            model(batch["src"], batch["tgt_in"])
        for h in hooks:
            h.remove()
        return got

    hs, ht = outputs(student), outputs(teacher)
    masks = {"enc": batch["src"] != 0, "dec": batch["tgt_out"] != 0}
    mse = {n: float(((hs[n] - ht[n]) ** 2)[masks[n[:3]]].mean()) for n in hs}
    expected = (mse["enc.1"] + mse["dec.0"] + mse["dec.1"]) / 3
    assert float(task.logged[-1]["hidden_loss"]) == pytest.approx(expected, rel=1e-5)
    assert mse["enc.0"] > 0.01  # matching the removed layer would have given another value
    assert float(task.logged[-1]["hidden_loss"]) != pytest.approx(sum(mse.values()) / 4, rel=1e-3)
    with torch.no_grad():
        task_only = translation_task(None, student).training_step(batch, 0)
    assert float(loss.detach()) == pytest.approx(float(task_only) + 2.0 * expected, rel=1e-5)


# --- the teacher stays outside the task ---------------------------------------------------------------------------
def test_teacher_is_in_no_state_dict_optimizer_or_train_mode() -> None:
    teacher = nmt(1)
    task = translation_task(teacher, nmt(0), hidden_weight=1.0)
    plain = translation_task(None, nmt(0))
    assert list(task.state_dict()) == list(plain.state_dict())
    teacher_ids, teacher_memory = {id(p) for p in teacher.parameters()}, {p.data_ptr() for p in teacher.parameters()}
    assert not any(v.data_ptr() in teacher_memory for v in task.state_dict().values())
    assert all(m is not teacher for m in task.modules())
    task.use_step_budget(StepBudget(10))  # what the round loop hands over before configure_optimizers
    opt = task.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in task.model.parameters()} and not in_optimizer & teacher_ids
    assert not any(p.requires_grad for p in teacher.parameters())
    task.train()
    task.training_step(nmt_batch(), 0).backward()
    assert not teacher.training and all(p.grad is None for p in teacher.parameters())
    assert task.run_report()["distillation"] == {
        "teacher": None,
        "alpha": 0.5,
        "temperature": 2.0,
        "hidden_weight": 1.0,
    }
    assert "distillation" not in plain.run_report()


def test_teacher_follows_the_student_dtype() -> None:
    teacher = nmt(1)
    task = translation_task(teacher, nmt(0).double())
    batch = nmt_batch()
    loss = task.training_step(batch, 0)
    assert loss.dtype == torch.float64 and next(teacher.parameters()).dtype == torch.float64
    assert torch.isfinite(loss)


def test_teacher_of_another_vocabulary_is_one_user_error() -> None:
    task = translation_task(nmt(1, vocab=VOCAB + 3), nmt(0))
    with pytest.raises(UserError, match=r"the teacher's logits have shape \(3, 5, 27\), the student's \(3, 5, 24\)"):
        task.training_step(nmt_batch(), 0)


def test_settings_errors_and_defaults(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run"
    with pytest.raises(UserError, match=re.escape(f"task.distill.teacher={missing}: no such run folder or checkpoint")):
        TranslationTask(nmt(), NoPruner(), TOKENIZER).use_distiller(
            build_distiller(OmegaConf.create({"teacher": str(missing)}))
        )
    with pytest.raises(UserError, match=r"task\.distill\.temprature is not a distillation setting"):
        build_distiller({"temprature": 3.0})
    for bad, message in (({"alpha": 1.5}, "alpha must be in"), ({"temperature": 0}, "temperature must be > 0")):
        with pytest.raises(UserError, match=message):
            Distiller(nmt(), **bad)
    with pytest.raises(UserError, match="hidden_weight must be >= 0"):
        Distiller(nmt(), hidden_weight=-1.0)
    assert build_distiller(None) is None and build_distiller(distill.DEFAULTS) is None
    yaml_node = OmegaConf.create(dict(distill.DEFAULTS))  # what Hydra hands over from conf/task/*.yaml
    task = TranslationTask(nmt(), NoPruner(), TOKENIZER)
    task.use_distiller(build_distiller(yaml_node))
    assert task.distiller is None


def test_teacher_of_another_kind_of_model_is_one_user_error() -> None:
    torch.manual_seed(0)
    classifier = build_classifier(num_classes=2, vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, enc_layers=1)
    with pytest.raises(UserError, match="a classification model cannot teach a translation model"):
        Distiller(classifier).check_student(nmt())
    Distiller(nmt(1)).check_student(nmt())  # the same kind: no error


# --- which teacher layer each student layer is matched to ---------------------------------------------------------
def decoder_lm(layers: int, numbers: tuple[int, ...] | None = None) -> torch.nn.Module:
    """A causal LM of `layers` layers; `numbers`: the original numbers its config records (a re-imported export)."""
    torch.manual_seed(0)
    return build_causal_lm(
        vocab_size=VOCAB,
        d_model=16,
        n_heads=2,
        d_ff=32,
        dec_layers=layers,
        dropout=0.0,
        layer_numbers=None if numbers is None else {"dec": numbers},
    )


def test_layers_are_matched_by_their_original_number() -> None:
    """A student recording its layers' original numbers gets the teacher's layers of those numbers: the teacher's
    index where the teacher records nothing, the teacher's own record where it has one; a layer removed in place
    is not matched; a number the teacher lacks is one UserError."""
    assert distill.layer_pairs(decoder_lm(2, (1, 3)), decoder_lm(4)) == {"dec.0": "dec.1", "dec.1": "dec.3"}
    assert distill.layer_pairs(decoder_lm(2, (2, 5)), decoder_lm(4, (0, 2, 3, 5))) == {
        "dec.0": "dec.1",
        "dec.1": "dec.3",
    }
    student = decoder_lm(3, (0, 2, 3))
    student.dec[1].remove("sa")
    student.dec[1].remove("ff")
    assert distill.layer_pairs(student, decoder_lm(4)) == {"dec.0": "dec.0", "dec.2": "dec.3"}
    with pytest.raises(UserError, match=r"dec\.1 is layer 3 of the original dec stack, which the teacher"):
        distill.layer_pairs(decoder_lm(2, (0, 3)), decoder_lm(3))


def test_unrecorded_stacks_match_by_index_only_when_the_counts_agree() -> None:
    """Without a record, equal stacks match by index (a student pruned within prunelab keeps its indices); a student
    stack of another length cannot be matched: one UserError line, at the task's check and at the first step."""
    student, teacher = decoder_lm(4), decoder_lm(4)
    student.dec[2].remove("sa")
    student.dec[2].remove("ff")
    assert distill.layer_pairs(student, teacher) == {"dec.0": "dec.0", "dec.1": "dec.1", "dec.3": "dec.3"}
    for student_layers, teacher_layers in ((2, 4), (4, 2)):
        with pytest.raises(UserError, match=rf"has {student_layers} layers and the teacher's {teacher_layers}") as e:
            Distiller(decoder_lm(teacher_layers), hidden_weight=1.0, source="RUN").check_student(
                decoder_lm(student_layers)
            )
        assert "\n" not in str(e.value)
    Distiller(decoder_lm(4), hidden_weight=0.0).check_student(decoder_lm(2))  # the logits alone: no layers matched
