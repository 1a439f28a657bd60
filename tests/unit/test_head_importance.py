"""I_h = E_x |∂L(x)/∂ξ_h| (Michel et al. 2019) against finite differences on the gates."""

from __future__ import annotations

import torch

from prunelab.criteria.heads import head_importance, sentence_losses
from prunelab.models import Transformer, build_transformer
from prunelab.models.addressing import attention_names, component, set_gate


def tiny64() -> Transformer:
    torch.manual_seed(0)
    model = build_transformer(vocab_size=30, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dec_layers=1, dropout=0.0)
    return model.double().eval()


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    src = torch.randint(4, 30, (3, 6), generator=g)
    src[2, 4:] = 0
    tgt = torch.randint(4, 30, (3, 5), generator=g)
    tgt_in = torch.cat([torch.ones(3, 1, dtype=torch.long), tgt[:, :-1]], 1)
    tgt_out = tgt.clone()
    tgt_out[1, 3:] = 0  # padding: excluded from the loss
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


def fd_importance(model: Transformer, batch: dict, head: str, eps: float = 1e-6) -> float:
    """mean over examples of |dL(x)/dξ_h| by central differences."""
    with torch.no_grad():
        set_gate(model, head, 1 + eps)
        up = sentence_losses(model, batch)
        set_gate(model, head, 1 - eps)
        down = sentence_losses(model, batch)
        set_gate(model, head, 1.0)
    return float(((up - down) / (2 * eps)).abs().mean())


def test_importance_matches_finite_differences() -> None:
    model, batch = tiny64(), make_batch()
    got = head_importance(model, [batch], normalize=False)
    for name in attention_names(model):
        for h in range(2):
            expected = fd_importance(model, batch, f"{name}.h{h}")
            assert abs(float(got[name][h]) - expected) < 1e-5 * max(1.0, expected), f"{name}.h{h}"


def test_per_example_not_batch_gradient() -> None:
    # |mean of gradients| <= mean of |gradients|; the importance must be the latter
    model, batch = tiny64(), make_batch()
    per_example = head_importance(model, [batch], normalize=False)
    for name in attention_names(model):
        gate = component(model, name).head_gate
        gate.requires_grad_(True)
        sentence_losses(model, batch).mean().backward()
        assert bool((per_example[name] >= gate.grad.abs().float() - 1e-6).all())
        gate.requires_grad_(False)
        gate.grad = None


def test_normalised_per_layer_and_model_left_unchanged() -> None:
    model, batch = tiny64(), make_batch()
    before = {n: component(model, n).head_gate.clone() for n in attention_names(model)}
    scores = head_importance(model, [batch, batch])
    assert set(scores) == set(attention_names(model))
    for name, s in scores.items():
        assert abs(float(s.norm()) - 1.0) < 1e-5
        assert torch.equal(component(model, name).head_gate, before[name])
        assert not component(model, name).head_gate.requires_grad


def test_masked_head_keeps_its_gate() -> None:
    model, batch = tiny64(), make_batch()
    set_gate(model, "dec.0.ea.h1", 0.0)
    head_importance(model, [batch])
    assert float(component(model, "dec.0.ea").head_gate[1]) == 0.0
