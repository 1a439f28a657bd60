"""Wang & Tu (2020) component importance: Eq. 1, Eq. 2's α search, and batched cached-encoder ablation."""

from __future__ import annotations

import pytest
import torch

from prunelab.criteria.components import (
    components_off,
    contribution_scores,
    criticality_scores,
    interpolated,
    order_by_importance,
    smallest_alpha,
)
from prunelab.data.tokenizer import WordTokenizer
from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import component, component_names
from prunelab.models.decoding import beam_search
from prunelab.scoring.scores import corpus_bleu
from prunelab.scoring.scoring import BleuScorer, greedy_group_ablation, group_ablation
from prunelab.scoring.variants import DecodeSettings, ablation_bleu, decode_variants

TOK = WordTokenizer([f"w{i}" for i in range(26)])  # 4 specials + 26 words = 30 ids


def model64(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = build_transformer(vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dec_layers=2, dropout=0.0)
    return m.double().eval()


def batches(n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        src = torch.randint(4, 30, (4, 7), generator=g)
        src[1, 5:] = 0
        src[3, 3:] = 0
        refs = [" ".join(f"w{int(t) - 4}" for t in row if t > 0) for row in src]  # copy task references
        out.append({"src": src, "ref": refs})
    return out


def test_contribution_clips_and_normalises() -> None:
    # baseline 30 -> C = 3: drops are clipped to [0, 3], then divided by the largest clipped drop
    drops = {"a": 5.0, "b": 1.5, "c": -2.0, "d": 0.75}
    scores = contribution_scores(drops, baseline=30.0)
    assert scores == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.25})
    small = contribution_scores({"a": 1.0, "b": 0.5}, baseline=30.0)  # nothing reaches C: max is 1.0
    assert small == pytest.approx({"a": 1.0, "b": 0.5})
    assert contribution_scores({"a": -1.0, "b": 0.0}, baseline=30.0) == {"a": 0.0, "b": 0.0}


def test_gate_zero_equals_output_replaced_by_zeros() -> None:
    model = model64()
    b = batches(1)[0]
    tgt = torch.randint(4, 30, (4, 5), generator=torch.Generator().manual_seed(1))
    for name in ("enc.1.ff", "dec.0.ea", "dec.1.sa"):
        with components_off(model, [name]):
            gated = model(b["src"], tgt)
        mod = component(model, name)
        original = mod.forward
        mod.forward = lambda *a, f=original, **k: torch.zeros_like(f(*a, **k))  # type: ignore[method-assign]
        try:
            zeroed = model(b["src"], tgt)
        finally:
            del mod.forward
        assert torch.equal(gated, zeroed), name
        assert float(mod.gate) == 1.0  # restored


@pytest.mark.parametrize("beam", [1, 3])
def test_batched_cached_encoder_ablation_equals_separate_decodes(beam: int) -> None:
    model = model64()
    b = batches(1)[0]
    names = component_names(model)
    variants = [frozenset(), *(frozenset([n]) for n in names), frozenset(["enc.0.sa", "dec.1.ff"])]
    outs = decode_variants(model, b["src"], variants, TOK, DecodeSettings(beam_size=beam))
    assert len(outs) == len(variants)
    differs = 0
    for v, got in zip(variants, outs, strict=True):
        with components_off(model, sorted(v)):
            want = beam_search(model, b["src"], TOK.bos_id, TOK.eos_id, beam_size=beam)
        assert got == want, sorted(v)
        differs += got != outs[0]
    assert differs > 0  # the ablations really change the translations


def test_ablation_bleu_matches_full_recomputation() -> None:
    model = model64()
    data = batches(2)
    settings = DecodeSettings(beam_size=2)
    res = ablation_bleu(model, data, TOK, settings, stop_below=None)
    assert res.sentences_decoded == res.sentences_total == 8 * (len(component_names(model)) + 1)
    assert res.baseline == pytest.approx(corpus_bleu(model, data, TOK, 2, settings))
    for name in ("enc.0.sa", "dec.1.ea"):
        with components_off(model, [name]):
            assert res.bleu[name] == pytest.approx(corpus_bleu(model, data, TOK, 2, settings))
    assert res.drops["enc.0.sa"] == pytest.approx(res.baseline - res.bleu["enc.0.sa"])


def test_smallest_alpha_on_a_monotone_function() -> None:
    calls: list[float] = []

    def drop(a: float) -> float:  # condition drop < 0.5 holds for a > 0.95
        calls.append(a)
        return 10.0 * (1.0 - a)

    c = smallest_alpha(drop, epsilon=0.5, grid=4, tolerance=0.01)
    assert 0.95 < c.alpha <= 0.95 + 0.01
    assert drop(c.alpha) < 0.5 and drop(c.alpha - 0.01) >= 0.5
    assert c.evaluations == len(calls) - 2 == 4 + 5  # grid 0, .25, .5, .75; then ceil(log2(0.25 / 0.01)) halvings
    assert smallest_alpha(lambda a: 0.0).alpha == 0.0  # no drop even at θ_0
    assert smallest_alpha(lambda a: 0.0).evaluations == 1


def test_interpolated_weights_and_restore() -> None:
    model = model64()
    theta0 = {k: v.clone() for k, v in model64(seed=1).state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    name = "dec.0.ff"
    with interpolated(model, name, theta0, 0.0):
        assert torch.equal(component(model, name).fc1.weight, theta0[f"{name}.fc1.weight"])
        assert torch.equal(model.enc[0].ff.fc1.weight, before["enc.0.ff.fc1.weight"])  # the rest untouched
    with interpolated(model, name, theta0, 0.25):
        want = 0.75 * theta0[f"{name}.fc2.weight"] + 0.25 * before[f"{name}.fc2.weight"]
        assert torch.allclose(component(model, name).fc2.weight, want)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_criticality_on_a_tiny_model_meets_its_definition() -> None:
    model = model64()
    theta0 = {k: v.clone() for k, v in model64(seed=1).state_dict().items()}
    tgt = torch.randint(4, 30, (4, 6), generator=torch.Generator().manual_seed(2))
    src = batches(1)[0]["src"]

    def score() -> float:  # a smooth stand-in for BLEU: 100 x mean max-probability of the model
        with torch.no_grad():
            return float(model(src, tgt).softmax(-1).amax(-1).mean()) * 100

    eps, tol = 0.05, 0.01
    base, found = criticality_scores(model, theta0, score, ["enc.0.ff", "dec.1.ea"], eps, grid=4, tolerance=tol)
    for name, c in found.items():
        with interpolated(model, name, theta0, c.alpha):
            assert base - score() < eps, name
        if c.alpha > 0:  # tolerance below the found α the condition fails (the search brackets it)
            lo = max(a for a, d in c.trace if d >= eps and a < c.alpha)
            assert c.alpha - lo <= tol + 1e-12


def test_group_ablation_is_cumulative_and_greedy_rescoring_picks_least_harmful() -> None:
    model = model64()
    data = batches(1)
    settings = DecodeSettings(beam_size=1)
    order = ["dec.1.ff", "enc.0.ff", "dec.0.sa"]
    pts = group_ablation(model, data, BleuScorer(TOK, settings), order)
    assert [c for c, _, _ in pts] == [0, 1, 2, 3] and [n for _, n, _ in pts] == [None, *order]
    with components_off(model, order[:2]):
        assert pts[2][2] == pytest.approx(corpus_bleu(model, data, TOK, 1, settings))
    greedy = greedy_group_ablation(model, data, BleuScorer(TOK, settings))
    assert len(greedy) == len(component_names(model)) + 1
    first = greedy[1][1]
    res = ablation_bleu(model, data, TOK, settings, stop_below=None)
    assert res.bleu[first] == pytest.approx(max(b for b in res.bleu.values() if b is not None))
    assert order_by_importance({"a": 0.5, "b": 0.1, "c": 0.5}) == ["b", "a", "c"]


def test_bleu_statistics_reproduce_sacrebleu_and_bound_any_completion() -> None:
    from prunelab.metrics import translation_scores
    from prunelab.scoring.variants import BleuStats

    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(8)]

    def sentence(n: int) -> str:
        return " ".join(words[int(i)] for i in torch.randint(0, 8, (n,), generator=g))

    refs = [sentence(3 + i % 5) + " ." for i in range(12)]
    hyps = [sentence(2 + i % 6) for i in range(12)]
    bs = BleuStats()
    assert bs.score(bs.of(hyps, refs)) == pytest.approx(translation_scores(hyps, refs).bleu, abs=1e-9)
    done, rest = bs.of(hyps[:5], refs[:5]), bs.of(refs[5:], refs[5:])
    ub = bs.upper_bound(done, rest)
    for trial in range(30):  # whatever the other 7 sentences become, the corpus stays at or under the bound
        tail = [refs[i] if (trial + i) % 3 == 0 else sentence(1 + (trial + i) % 9) for i in range(5, 12)]
        assert translation_scores(hyps[:5] + tail, refs).bleu <= ub + 1e-9
    assert translation_scores(hyps[:5] + refs[5:], refs).bleu <= ub + 1e-9


def test_early_stopping_keeps_eq1_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ablations that provably lose more than C stop early; the contribution scores equal the exhaustive
    ones. Decoding is replaced by known outputs: the unablated model translates perfectly."""
    import prunelab.scoring.variants as comp

    refs = [" ".join(f"w{(i * 3 + j) % 26}" for j in range(4 + i % 4)) for i in range(40)]
    data = [{"src": torch.arange(i, i + 10)[:, None], "ref": refs[i : i + 10]} for i in range(0, 40, 10)]
    ids = {r: [TOK.stoi[w] for w in r.split()] for r in refs}
    broken = {"bad": lambda r: [5, 6], "worse": lambda r: [], "fine": lambda r: ids[r] + [7] * (refs.index(r) % 8 == 0)}

    def fake(model, src, variants, tok, settings):
        out = []
        for v in variants:
            rows = [ids[refs[int(i)]] for i in src[:, 0]]
            if v:
                (name,) = v
                rows = [broken[name](refs[int(i)]) for i in src[:, 0]]
            out.append(rows)
        return out

    monkeypatch.setattr(comp, "decode_variants", fake)
    model = model64()
    names = list(broken)
    early = ablation_bleu(model, data, TOK, DecodeSettings(beam_size=1), names, max_rows=10)
    exact = ablation_bleu(model, data, TOK, DecodeSettings(beam_size=1), names, stop_below=None, max_rows=10)
    assert early.baseline == pytest.approx(100.0)
    assert set(early.stopped) == {"bad", "worse"} and early.bleu["fine"] == pytest.approx(exact.bleu["fine"])
    assert early.sentences_decoded < exact.sentences_decoded
    for n in early.stopped:
        assert exact.bleu[n] <= early.bleu_upper_bound[n] <= 90.0  # the bound held and was below the clip
    assert contribution_scores(early.drops, early.baseline) == pytest.approx(
        contribution_scores(exact.drops, exact.baseline)
    )


def test_classifier_ablation_scores_accuracy_with_the_component_output_zeroed() -> None:
    """For a classifier, the task's scorer (ClassificationTask.scorer) scores accuracy (%) in the ablation and
    its variants; checked against a model whose component returns zeros, counted by hand."""
    from prunelab.models import build_classifier
    from prunelab.tasks import ClassificationTask

    torch.manual_seed(0)
    model = build_classifier(num_classes=3, vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=2).eval()
    g = torch.Generator().manual_seed(0)
    data = [{"src": torch.randint(4, 30, (16, 7), generator=g), "label": torch.randint(0, 3, (16,), generator=g)}]

    def by_hand(name: str | None) -> float:
        mod = component(model, name) if name else None
        if mod is not None:
            original = mod.forward
            mod.forward = lambda *a, f=original, **k: torch.zeros_like(f(*a, **k))  # type: ignore[method-assign]
        try:
            with torch.no_grad():
                pred = model(data[0]["src"]).argmax(-1)
        finally:
            if mod is not None:
                del mod.forward
        return 100.0 * float((pred == data[0]["label"]).float().mean())

    names = component_names(model)
    assert names == ["enc.0.sa", "enc.0.ff", "enc.1.sa", "enc.1.ff"]
    scorer = ClassificationTask.scorer(None)
    res = scorer.ablation(model, data, names)
    assert res.baseline == pytest.approx(by_hand(None))
    assert res.bleu == {n: pytest.approx(by_hand(n)) for n in names} and not res.stopped
    scores, _ = scorer.variants(model, data, [frozenset(), frozenset(names[:2])])
    assert scores[0] == pytest.approx(by_hand(None))
    assert len({round(by_hand(n), 3) for n in names} | {round(res.baseline, 3)}) > 1, "ablations must change something"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_without_ties_matches_the_textbook_formula(seed: int) -> None:
    """rho = 1 - 6 sum d^2 / (n (n^2 - 1)) when no two values tie; a monotone transform changes nothing."""
    from prunelab.criteria.components import spearman

    g = torch.Generator().manual_seed(seed)
    n = 12
    a = {f"c{i}": float(v) for i, v in enumerate(torch.randn(n, generator=g))}
    b = {f"c{i}": float(v) for i, v in enumerate(torch.randn(n, generator=g))}
    rank = lambda s: {k: r for r, k in enumerate(sorted(s, key=s.get), start=1)}  # noqa: E731
    ra, rb = rank(a), rank(b)
    d2 = sum((ra[k] - rb[k]) ** 2 for k in a)
    assert spearman(a, b) == pytest.approx(1 - 6 * d2 / (n * (n * n - 1)))
    assert spearman(a, {k: v**3 + 5 for k, v in a.items()}) == pytest.approx(1.0)
    assert spearman(a, {k: -v for k, v in a.items()}) == pytest.approx(-1.0)


def test_spearman_with_ties_is_pearson_of_average_ranks() -> None:
    from prunelab.criteria.components import average_ranks, spearman

    a = {"x": 1.0, "y": 2.0, "z": 2.0, "w": 5.0, "v": 0.5}
    b = {"x": 0.1, "y": 0.3, "z": 0.2, "w": 0.2, "v": 0.0, "only_in_b": 9.0}
    assert average_ranks([1.0, 2.0, 2.0, 5.0, 0.5]) == [2.0, 3.5, 3.5, 5.0, 1.0]
    names = sorted(set(a) & set(b))
    ra = torch.tensor(average_ranks([a[n] for n in names]))
    rb = torch.tensor(average_ranks([b[n] for n in names]))
    pearson = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
    assert spearman(a, b) == pytest.approx(pearson)
    assert spearman(a, {k: 1.0 for k in a}) is None  # a constant score ranks nothing
    assert spearman({"x": 1.0}, {"x": 2.0}) is None
