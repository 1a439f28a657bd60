"""Pruner behaviours pinned against hand computations, so that moving the code cannot change them unnoticed:

- `pruner=components` chooses the components with the LOWEST Eq. 1 contribution (Wang & Tu 2020);
- gradual magnitude pruning (MP, and the MP round inside SLT-MP and MP-SLT) follows the cubic schedule
  s_t = s_f + (s_0 - s_f) (1 - (t - t_0) / (t_end - t_0))^3 (Zhu & Gupta 2017) at every pruning step, per
  matrix, holds the level in between, and its mask is final exactly from the end of the ramp.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import component_names
from prunelab.pruning import MagnitudePruner, MPSLTPruner, Pruner, SLTMPPruner
from prunelab.pruning.components import ComponentPruner
from prunelab.pruning.masks import prunable_weights
from prunelab.scoring.variants import AblationResult
from prunelab.tasks import TranslationTask

# --- pruner=components -------------------------------------------------------------------------------------


def two_by_two() -> Transformer:
    torch.manual_seed(0)
    m = build_transformer(vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dec_layers=2, dropout=0.0)
    return m.eval()


BASELINE = 50.0  # BLEU; Eq. 1 clips drops to [0, 10% of it] = [0, 5]
DROPS = {  # BLEU drop when the component is zeroed
    "enc.0.sa": 7.0,  # above the clip: 5 -> 1.0
    "enc.0.ff": 0.5,  # 0.1
    "enc.1.sa": 3.0,  # 0.6
    "enc.1.ff": -1.0,  # zeroing it helped: 0 -> 0.0
    "dec.0.sa": 4.0,  # 0.8
    "dec.0.ea": 12.0,  # 1.0
    "dec.0.ff": 0.2,  # 0.04
    "dec.1.sa": 2.0,  # 0.4
    "dec.1.ea": 5.5,  # 1.0
    "dec.1.ff": 1.0,  # 0.2
}
EQ1_BY_HAND = {
    "enc.0.sa": 1.0,
    "enc.0.ff": 0.1,
    "enc.1.sa": 0.6,
    "enc.1.ff": 0.0,
    "dec.0.sa": 0.8,
    "dec.0.ea": 1.0,
    "dec.0.ff": 0.04,
    "dec.1.sa": 0.4,
    "dec.1.ea": 1.0,
    "dec.1.ff": 0.2,
}


def component_pruner(model: Transformer, sparsity: float, monkeypatch: pytest.MonkeyPatch) -> ComponentPruner:
    """A ComponentPruner whose BLEU ablation (the decoding) is replaced by the known drops above."""

    def fake_ablation(model, batches, tok, settings, names=None, **kw):
        assert sorted(names) == sorted(DROPS)  # every component present is scored
        return AblationResult(
            baseline=BASELINE,
            bleu={n: BASELINE - DROPS[n] for n in names},
            bleu_upper_bound={},
            passes=1,
            seconds=0.0,
            baseline_seconds=0.0,
        )

    monkeypatch.setattr("prunelab.scoring.scoring.ablation_bleu", fake_ablation)
    p = ComponentPruner(sparsity=sparsity, mode="retrain", baseline="none")
    p.attach(model)
    data = SimpleNamespace(val_dataloader=lambda: [{"src": torch.ones(1, 2, dtype=torch.long)}], tokenizer=None)
    task = SimpleNamespace(own_scorer=TranslationTask.scorer)  # the task says how to score: BLEU (GNMT beam)
    p.use_data(data, task)
    return p


@pytest.mark.parametrize(
    ("sparsity", "expected"),
    [
        (0.2, ["enc.1.ff", "dec.0.ff"]),
        (0.3, ["enc.1.ff", "dec.0.ff", "enc.0.ff"]),
        (0.6, ["enc.1.ff", "dec.0.ff", "enc.0.ff", "dec.1.ff", "dec.1.sa", "enc.1.sa"]),
    ],
)
def test_components_chooses_the_lowest_eq1_contributions(
    sparsity: float, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = two_by_two()
    assert sorted(component_names(model)) == sorted(DROPS)
    p = component_pruner(model, sparsity, monkeypatch)
    chosen = p.choose(model)
    assert len(chosen) == round(sparsity * len(DROPS))
    assert set(chosen) == set(expected)  # the k lowest of EQ1_BY_HAND, by hand
    assert chosen == expected  # least important first
    stored = {n: float(v) for n, v in zip(p._names, p.contribution.tolist(), strict=True)}
    assert stored == pytest.approx(EQ1_BY_HAND, abs=1e-6)  # (float32 buffer) Eq. 1 itself: clipped to [0, C], / largest


def test_components_choice_follows_the_scores_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drops replaced by known ones (a random order, under the clip): the chosen set is the k lowest."""
    model = two_by_two()
    names = component_names(model)
    values = torch.randperm(len(names), generator=torch.Generator().manual_seed(5)).tolist()
    scores = {n: 0.1 * v for n, v in zip(names, values, strict=True)}
    monkeypatch.setattr(f"{__name__}.DROPS", scores)  # what component_pruner's ablation gives
    p = component_pruner(model, 0.4, monkeypatch)
    by_hand = sorted(names, key=lambda n: scores[n])[:4]
    assert p.choose(model) == by_hand


def test_round_end_removes_exactly_the_lowest_components(monkeypatch: pytest.MonkeyPatch) -> None:
    model = two_by_two()
    p = component_pruner(model, 0.3, monkeypatch)
    p.on_round_end(model, 0)
    p.on_round_start(model, 1)  # mode=retrain: the architecture without them
    assert set(component_names(model, include_removed=True)) - set(component_names(model)) == {
        "enc.1.ff",
        "dec.0.ff",
        "enc.0.ff",
    }


def test_reported_choice_is_least_important_first(monkeypatch: pytest.MonkeyPatch) -> None:
    model = two_by_two()
    p = component_pruner(model, 0.3, monkeypatch)
    p.on_round_end(model, 0)
    # results.json's components.chosen: by contribution, least important first (as documented), also after a
    # resume, which rebuilds the list from the buffers
    assert p.report(model)["components"]["chosen"] == ["enc.1.ff", "dec.0.ff", "enc.0.ff"]
    p.enter_round(1)
    assert p.chosen == ["enc.1.ff", "dec.0.ff", "enc.0.ff"]


# --- gradual magnitude pruning: the cubic schedule -----------------------------------------------------------

# The schedule's defaults (frequency 50, ramp from 20% to 70% of the round's steps), which every MP-style pruner
# shares, so these tests do not depend on how the constructors name them.
TOTAL = 260
START, END = 52, 182  # round(0.2 * 260), round(0.7 * 260)
FREQ = 50  # pruning steps 52, 102, 152 and always the end, 182 (not on the 50-step grid)
PRUNING_STEPS = [52, 102, 152, 182]
FIXED_ROUND = 12  # steps of a round with a fixed mask


def cubic_by_hand(t: int, s0: float, sf: float) -> float:
    return sf + (s0 - sf) * (1 - (t - START) / (END - START)) ** 3


def expected_level(step: int, s0: float, sf: float, before: float) -> float:
    """The sparsity after on_step_end(step): the schedule's value at the latest pruning step so far, or the
    level the round started with when none has come yet."""
    done = [t for t in PRUNING_STEPS if t <= step]
    return cubic_by_hand(done[-1], s0, sf) if done else before


def zero_fractions(pruner: Pruner) -> dict[str, tuple[int, int]]:
    return {n: (int((m == 0).sum()), m.numel()) for n, m in pruner.masks.items()}


def drive_round(
    model: Transformer, pruner: Pruner, round_idx: int, s0: float, sf: float, before: float, mp: bool
) -> None:
    """A simulated round with every hook Lightning calls, checked after every step against the hand schedule."""
    pruner.on_round_start(model, round_idx)
    g = torch.Generator().manual_seed(10 + round_idx)
    levels = []
    total = TOTAL if mp else FIXED_ROUND
    for step in range(total + 1):
        with torch.no_grad():  # an "optimizer step": magnitudes change between pruning steps
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        pruner.on_step_end(model, step, total)
        pruner.apply_masks()
        want = expected_level(step, s0, sf, before) if mp else sf
        levels.append(want)
        for name, (zeros, n) in zero_fractions(pruner).items():
            assert abs(zeros - want * n) <= 0.5, (round_idx, step, name, zeros / n, want)  # round(s * n) per matrix
        for name, w in prunable_weights(model).items():
            assert bool((w[pruner.masks[name] == 0] == 0).all()), name
        assert pruner.mask_is_final(step, total) == (not mp or step >= END), (round_idx, step)
    if mp:  # the hand schedule itself: s_0 at t_0, s_f at t_end, in between strictly rising
        assert levels[START] == pytest.approx(s0) and levels[END] == pytest.approx(sf) == levels[-1]
        assert levels[102] == levels[151] == pytest.approx(sf + (s0 - sf) * (1 - 50 / 130) ** 3)
        assert len(set(levels[START : END + 1])) == len(PRUNING_STEPS)


def test_magnitude_pruner_follows_the_cubic_schedule_at_every_step(tiny_model: Transformer) -> None:
    pruner = MagnitudePruner(sparsity=0.8, initial_sparsity=0.2, frequency=FREQ)
    pruner.attach(tiny_model)
    drive_round(tiny_model, pruner, 0, s0=0.2, sf=0.8, before=0.0, mp=True)


def test_slt_mp_round_follows_the_cubic_schedule_from_60_percent(tiny_model: Transformer) -> None:
    pruner = SLTMPPruner(sparsity=0.9)
    pruner.attach(tiny_model)
    assert [(r.sparsity, r.mp_from) for r in pruner.plan] == [(0.0, None), (0.5, None), (0.6, None), (0.9, 0.6)]
    before = 0.0
    for r, rnd in enumerate(pruner.plan[:3]):  # dense, SLT 50%, SLT 60%: fixed masks, final at every step
        drive_round(tiny_model, pruner, r, s0=before, sf=rnd.sparsity, before=before, mp=False)
        pruner.on_round_end(tiny_model, r)
        before = rnd.sparsity
    drive_round(tiny_model, pruner, 3, s0=0.6, sf=0.9, before=0.6, mp=True)


def test_mp_slt_first_round_follows_the_cubic_schedule_from_dense(tiny_model: Transformer) -> None:
    pruner = MPSLTPruner(sparsity=0.8, intermediate_sparsity=0.6, levels=[0.8])
    pruner.attach(tiny_model)
    assert [(r.sparsity, r.mp_from) for r in pruner.plan] == [(0.6, 0.0), (0.8, None)]
    drive_round(tiny_model, pruner, 0, s0=0.0, sf=0.6, before=0.0, mp=True)
    pruner.on_round_end(tiny_model, 0)
    drive_round(tiny_model, pruner, 1, s0=0.8, sf=0.8, before=0.8, mp=False)


def test_the_hand_schedule_is_zhu_and_gupta() -> None:
    """The formula used above, evaluated by hand: halfway up the ramp, (1/2)^3 = 1/8 of the gap remains."""
    assert cubic_by_hand(117, 0.0, 0.8) == pytest.approx(0.8 - 0.8 / 8)
    assert cubic_by_hand(START, 0.3, 0.9) == pytest.approx(0.3)
    assert math.isclose(cubic_by_hand(END, 0.3, 0.9), 0.9)
