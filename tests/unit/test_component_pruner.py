"""`pruner=components` and component removal: architectures, parameter counts, rewinding, LayerDrop."""

from __future__ import annotations

import pytest
import torch

from prunelab.errors import UserError
from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import component_names
from prunelab.models.surgery import load_state_dict_with_heads, remove_components
from prunelab.pruning.components import ComponentPruner


def model(**kw: object) -> Transformer:
    torch.manual_seed(0)
    args = {"vocab_size": 40, "d_model": 16, "n_heads": 2, "d_ff": 32, "enc_layers": 2, "dec_layers": 3}
    return build_transformer(**{**args, "dropout": 0.0, **kw}).eval()


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def component_params(m: Transformer, name: str) -> int:
    """Independently: the sub-layer's own parameters plus its residual LayerNorm's."""
    side, i, kind = name.split(".")
    layer = (m.enc if side == "enc" else m.dec)[int(i)]
    return params(getattr(layer, kind)) + params(getattr(layer, f"{kind}_res"))


def test_removed_components_leave_the_residual_untouched_and_the_count_drops() -> None:
    m = model()
    src = torch.randint(4, 40, (2, 6))
    tgt = torch.randint(4, 40, (2, 5))
    gone = ["enc.1.ff", "dec.0.ea", "dec.2.sa"]
    expected = params(m) - sum(component_params(m, n) for n in gone)
    from prunelab.criteria.components import components_off

    with components_off(m, gone):  # gate 0 == nothing added to the residual
        want = m(src, tgt)
    remove_components(m, gone)
    assert params(m) == expected
    assert set(component_names(m)) == set(component_names(m, include_removed=True)) - set(gone)
    assert torch.allclose(m(src, tgt), want, atol=1e-6)


def test_architecture_built_without_components_matches_removal() -> None:
    gone = ("enc.0.sa", "dec.1.ff")
    built = model(removed=gone)
    cut = model()
    remove_components(cut, list(gone))
    assert params(built) == params(cut)
    assert set(built.state_dict()) == set(cut.state_dict())


def test_state_dict_of_a_reduced_model_loads_into_a_full_one() -> None:
    small = model()
    remove_components(small, ["dec.2.ff", "enc.0.sa"])
    small.dec[0].sa.prune_heads([1])
    full = model()
    load_state_dict_with_heads(full, small.state_dict())
    assert params(full) == params(small)
    src, tgt = torch.randint(4, 40, (2, 6)), torch.randint(4, 40, (2, 5))
    assert torch.equal(full(src, tgt), small(src, tgt))
    back = model()
    remove_components(back, ["dec.1.sa"])  # a component the state has is rebuilt, one it lacks removed
    load_state_dict_with_heads(back, small.state_dict())
    assert torch.equal(back(src, tgt), small(src, tgt))


def pruner_on(m: Transformer, chosen: list[str], **kw: object) -> ComponentPruner:
    p = ComponentPruner(**{"sparsity": 0.2, **kw})  # type: ignore[arg-type]
    p.attach(m)
    p.choose = lambda model: chosen  # type: ignore[method-assign]
    return p


def test_rewind_restores_theta0_for_chosen_components_only() -> None:
    m = model()
    theta0 = {k: v.clone() for k, v in m.state_dict().items()}
    p = pruner_on(m, ["enc.1.ff", "dec.2.ea"], mode="rewind", finetune_steps=5)
    with torch.no_grad():
        for w in m.parameters():
            w.add_(torch.randn_like(w))  # "training"
    theta_f = {k: v.clone() for k, v in m.state_dict().items()}
    p.on_round_end(m, 0)
    assert p.stage(1) == "continue"
    p.on_round_start(m, 1)  # the continue baseline starts from θ_f
    with torch.no_grad():
        for w in m.parameters():
            w.mul_(0.5)  # its fine-tuning
    p.on_round_start(m, 2)  # rewind: back to θ_f, the chosen components to θ_0
    for k, v in m.state_dict().items():
        chosen = k.startswith(("enc.1.ff.", "enc.1.ff_res.", "dec.2.ea.", "dec.2.ea_res."))
        if k.endswith(("gate", "head_ids")):
            continue
        assert torch.equal(v, theta0[k] if chosen else theta_f[k]), k


def test_retrain_builds_the_smaller_model_from_theta0_and_shallow_matches_its_size() -> None:
    m = model()
    theta0 = {k: v.clone() for k, v in m.state_dict().items()}
    full = params(m)
    chosen = ["dec.0.ff", "dec.1.ff", "dec.2.sa", "enc.0.ff"]
    expected = full - sum(component_params(m, n) for n in chosen)
    p = pruner_on(m, chosen, mode="retrain", baseline="shallow")
    with torch.no_grad():
        for w in m.parameters():
            w.add_(1.0)
    p.on_round_end(m, 0)
    p.on_round_start(m, 1)
    assert params(m) == expected
    for k, v in m.state_dict().items():
        if not k.endswith(("gate", "head_ids")):
            assert torch.equal(v, theta0[k]), k  # from scratch: θ_0
    p.on_round_start(m, 2)  # shallow: whole top decoder layers, closest in parameters
    per_dec_layer = sum(component_params(model(), f"dec.2.{k}") for k in ("sa", "ea", "ff"))
    gone = set(component_names(m, include_removed=True)) - set(component_names(m))
    k = len(gone) // 3
    assert gone == {f"dec.{i}.{c}" for i in range(3 - k, 3) for c in ("sa", "ea", "ff")}
    assert abs(params(m) - expected) <= per_dec_layer / 2 + 1
    for key, v in m.state_dict().items():
        if not key.endswith(("gate", "head_ids")):
            assert torch.equal(v, theta0[key]), key


def test_rounds_stages_and_arguments() -> None:
    p = ComponentPruner(sparsity=0.2, mode="retrain", baseline="none")
    assert p.rounds == 2 and [p.stage(r) for r in range(2)] == ["dense", "retrain"]
    p = ComponentPruner(sparsity=0.2, mode="rewind", finetune_steps=7)
    assert [p.round_steps(r, 100, pretrained=True) for r in range(3)] == [0, 7, 7]
    assert [p.stage(r) for r in range(3)] == ["dense", "continue", "rewind"]
    with pytest.raises(UserError, match=r"pruner\.mode"):
        ComponentPruner(mode="shrink")


def test_layerdrop_zero_is_identity_and_p_drops_about_p() -> None:
    src, tgt = torch.randint(4, 40, (2, 6)), torch.randint(4, 40, (2, 5))
    plain = model()
    same = model(layerdrop=0.0).train()
    assert torch.equal(same(src, tgt), plain(src, tgt))
    m = model(layerdrop=0.3).train()
    runs, calls = 400, []
    for layer in [*m.enc, *m.dec]:
        orig = layer.skip
        layer.skip = lambda kind, x, inputs=None, f=orig: (calls.append(f(kind, x, inputs) is not None), None)[1]  # type: ignore
    for _ in range(runs):
        m(src, tgt)
    dropped = sum(calls) / len(calls)
    assert len(calls) == runs * 13  # 2 x 2 + 3 x 3 sub-layers per forward
    assert abs(dropped - 0.3) < 0.04
    m2 = model(layerdrop=0.5).train()
    m2(src, tgt).sum().backward()
    assert all(p.grad is not None for p in m2.parameters())  # dropped sub-layers still get (zero) gradients


def test_layerdrop_keeps_every_parameter_in_the_graph_even_with_the_encoder_cut_off() -> None:
    """With every encoder-attention sub-layer dropped, nothing reads the encoder output; its parameters must
    still receive (zero) gradients, or DDP without unused-parameter detection fails."""
    src, tgt = torch.randint(4, 40, (2, 6)), torch.randint(4, 40, (2, 5))
    for seed in range(5):
        torch.manual_seed(seed)
        m = model(layerdrop=0.99).train()  # almost surely every sub-layer is dropped
        m(src, tgt).sum().backward()
        missing = [n for n, p in m.named_parameters() if p.grad is None]
        assert missing == [], missing
