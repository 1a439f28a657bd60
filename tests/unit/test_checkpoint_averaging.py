"""average_checkpoints: the mean of the weights (fairseq's semantics), the last checkpoint's masks re-applied, the
last checkpoint's gates, integer buffers, pruner state and everything outside the state_dict, and refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prunelab.errors import UserError
from prunelab.models import build_transformer
from prunelab.pruning import MagnitudePruner
from prunelab.training.averaging import average_checkpoints
from prunelab.training.io import checkpoint_masks, mask_key, read_state

W = "model.enc.0.ff.fc1.weight"
B = "model.enc.0.ff.fc1.bias"
GATE, HEAD_GATE, HEAD_IDS = "model.enc.0.sa.gate", "model.enc.0.sa.head_gate", "model.enc.0.sa.head_ids"
STEPS = "model.enc.0.counter"  # an integer buffer
MASK = mask_key("enc.0.ff.fc1.weight")  # pruner.mask__enc__0__ff__fc1__weight
IMPORTANCE = "pruner.importance"  # pruner state (a float buffer, not a weight)


def fake_checkpoint(i: int, weight: torch.Tensor, mask: torch.Tensor, **extra: torch.Tensor) -> dict[str, Any]:
    state = {
        W: weight,
        B: torch.full((3,), float(i)),
        GATE: torch.tensor(float(i)),
        HEAD_GATE: torch.full((2,), float(i)),
        HEAD_IDS: torch.tensor([0, i]),
        STEPS: torch.tensor(10 * i),
        MASK: mask,
        IMPORTANCE: torch.full((2, 2), float(i)),
        **extra,
    }
    return {
        "epoch": i,
        "global_step": 100 * i,
        "state_dict": state,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.full((3,), float(i))}}, "param_groups": []}],
        "loops": {"step": i},
    }


def save(tmp_path: Path, ckpts: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for i, c in enumerate(ckpts):
        p = tmp_path / f"step{i}.ckpt"
        torch.save(c, p)
        paths.append(p)
    return paths


def three(tmp_path: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    """Three checkpoints of a matrix pruned gradually: the mask grows from none to 2 to 3 zeros; each checkpoint's
    weight is 0 where its own mask is, and holds values where later masks prune."""
    ones = torch.ones(3, 4)
    m1 = ones.clone()
    m1[0, 0] = m1[1, 2] = 0
    m2 = m1.clone()
    m2[2, 3] = 0
    weights = [torch.arange(12.0).view(3, 4) + 1, torch.arange(12.0).view(3, 4) * 2 + 5, -torch.arange(12.0).view(3, 4)]
    masks = [ones, m1, m2]
    ckpts = [fake_checkpoint(i, w * m, m) for i, (w, m) in enumerate(zip(weights, masks, strict=True))]
    return save(tmp_path, ckpts), ckpts


def test_the_weights_are_the_mean_and_the_last_mask_is_applied(tmp_path: Path) -> None:
    paths, ckpts = three(tmp_path)
    out = average_checkpoints(paths, tmp_path / "avg" / "averaged.ckpt")
    assert out == tmp_path / "avg" / "averaged.ckpt"
    avg = read_state(out)["state_dict"]  # loads with weights_only=True
    mask = ckpts[-1]["state_dict"][MASK]
    by_hand = torch.zeros(3, 4)
    for r in range(3):
        for c in range(4):
            by_hand[r, c] = sum(float(k["state_dict"][W][r, c]) for k in ckpts) / 3 * float(mask[r, c])
    torch.testing.assert_close(avg[W], by_hand, rtol=0, atol=0)
    # entries the last mask prunes are exactly 0 although earlier checkpoints held values there
    assert float(ckpts[0]["state_dict"][W][2, 3]) != 0 and float(ckpts[1]["state_dict"][W][2, 3]) != 0
    assert bool((avg[W][mask == 0] == 0).all())
    assert int((avg[W] == 0).sum()) == int((mask == 0).sum()) == 3  # the last checkpoint's sparsity, exactly
    torch.testing.assert_close(avg[B], torch.full((3,), 1.0), rtol=0, atol=0)  # (0 + 1 + 2) / 3
    torch.testing.assert_close(avg[MASK], mask, rtol=0, atol=0)


def test_gates_integer_buffers_pruner_state_and_the_rest_are_the_last_checkpoints(tmp_path: Path) -> None:
    paths, ckpts = three(tmp_path)
    got = read_state(average_checkpoints(paths, tmp_path / "avg.ckpt"))
    last = ckpts[-1]
    for k in (GATE, HEAD_GATE, HEAD_IDS, STEPS, MASK, IMPORTANCE):
        assert got["state_dict"][k].dtype == last["state_dict"][k].dtype, k
        torch.testing.assert_close(got["state_dict"][k], last["state_dict"][k], rtol=0, atol=0)
    assert list(got["state_dict"]) == list(last["state_dict"])  # same keys, same order
    assert got["epoch"] == 2 and got["global_step"] == 200 and got["loops"] == {"step": 2}
    torch.testing.assert_close(got["optimizer_states"][0]["state"][0]["exp_avg"], torch.full((3,), 2.0), rtol=0, atol=0)
    assert got["prunelab_averaged_from"] == [str(p) for p in paths]


def test_low_precision_weights_keep_their_dtype(tmp_path: Path) -> None:
    mask = torch.ones(2, 2)
    ws = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[2.0, 2.0], [4.0, 8.0]])]
    ckpts = [fake_checkpoint(i, w.to(torch.bfloat16), mask, **{"model.x": w.half()}) for i, w in enumerate(ws)]
    ckpts = [{**c, "state_dict": {**c["state_dict"], B: c["state_dict"][B].half()}} for c in ckpts]
    avg = read_state(average_checkpoints(save(tmp_path, ckpts), tmp_path / "a.ckpt"))["state_dict"]
    assert avg[W].dtype == torch.bfloat16 and avg["model.x"].dtype == torch.float16 and avg[B].dtype == torch.float16
    expected = torch.tensor([[1.5, 2.0], [3.5, 6.0]])
    torch.testing.assert_close(avg[W].float(), expected, rtol=0, atol=0)
    torch.testing.assert_close(avg["model.x"].float(), expected, rtol=0, atol=0)


def test_one_checkpoint_is_itself(tmp_path: Path) -> None:
    paths, ckpts = three(tmp_path)
    avg = read_state(average_checkpoints(paths[-1:], tmp_path / "one.ckpt"))["state_dict"]
    for k, v in ckpts[-1]["state_dict"].items():
        torch.testing.assert_close(avg[k], v, rtol=0, atol=0)


def test_a_real_pruned_model(tmp_path: Path) -> None:
    """The state_dict of a real task (model + MagnitudePruner): mask keys map to the model's parameters, and the
    average loads back into the model with the last checkpoint's sparsity."""
    torch.manual_seed(0)
    model = build_transformer(vocab_size=20, d_model=16, n_heads=2, d_ff=32, enc_layers=1, dec_layers=1, dropout=0.0)
    pruner = MagnitudePruner(sparsity=0.5)
    pruner.attach(model)
    wrapper = torch.nn.Module()
    wrapper.model, wrapper.pruner = model, pruner
    ckpts = []
    for i in range(3):
        state = {k: v.clone() for k, v in wrapper.state_dict().items()}
        for name, mask in checkpoint_masks(state).items():
            mask.copy_((torch.rand_like(mask) > 0.2 * i).float())  # masks of a later checkpoint prune more
            state["model." + name] = (torch.randn_like(mask) + 3) * mask  # no weight is 0 by chance
        ckpts.append({"state_dict": state, "global_step": i})
    paths = save(tmp_path, ckpts)
    avg = read_state(average_checkpoints(paths, tmp_path / "avg.ckpt"))["state_dict"]
    masks = checkpoint_masks(ckpts[-1]["state_dict"])
    assert masks, "the pruner registered no masks"
    for name, mask in masks.items():
        key = "model." + name
        mean = sum(c["state_dict"][key] for c in ckpts) / 3
        torch.testing.assert_close(avg[key], mean * mask)
        assert int((avg[key] == 0).sum()) == int((mask == 0).sum()), name
    for k, v in ckpts[-1]["state_dict"].items():
        if k.endswith((".gate", ".head_gate", ".head_ids")) or k.startswith("pruner."):
            torch.testing.assert_close(avg[k], v, rtol=0, atol=0)
    wrapper.load_state_dict(avg)  # the same keys and shapes as the model's


def test_refusals(tmp_path: Path) -> None:
    paths, ckpts = three(tmp_path)
    with pytest.raises(UserError, match="no checkpoints to average"):
        average_checkpoints([], tmp_path / "x.ckpt")
    # a head removed between checkpoints: head_ids and head_gate shrink
    fewer = fake_checkpoint(3, ckpts[-1]["state_dict"][W], ckpts[-1]["state_dict"][MASK])
    fewer["state_dict"][HEAD_IDS] = torch.tensor([0])
    shrunk = tmp_path / "shrunk.ckpt"
    torch.save(fewer, shrunk)
    with pytest.raises(UserError, match=r"'model\.enc\.0\.sa\.head_ids' has shape \(2,\) in .* but \(1,\) in") as e:
        average_checkpoints([*paths, shrunk], tmp_path / "x.ckpt")
    assert "\n" not in str(e.value)
    # a component removed: a key missing
    missing = fake_checkpoint(3, ckpts[-1]["state_dict"][W], ckpts[-1]["state_dict"][MASK])
    del missing["state_dict"][B]
    p = tmp_path / "missing.ckpt"
    torch.save(missing, p)
    with pytest.raises(UserError, match=r"different parameters \('model\.enc\.0\.ff\.fc1\.bias' only in") as e:
        average_checkpoints([paths[0], p], tmp_path / "x.ckpt")
    assert "\n" not in str(e.value)
    extra = fake_checkpoint(
        3, ckpts[-1]["state_dict"][W], ckpts[-1]["state_dict"][MASK], **{"model.new": torch.ones(1)}
    )
    torch.save(extra, p)
    with pytest.raises(UserError, match=r"'model\.new' only in .*missing\.ckpt"):
        average_checkpoints([paths[0], p], tmp_path / "x.ckpt")
    # another dtype
    half = fake_checkpoint(3, ckpts[-1]["state_dict"][W].half(), ckpts[-1]["state_dict"][MASK])
    torch.save(half, p)
    with pytest.raises(UserError, match=r"is torch\.float32 in .* but torch\.float16 in"):
        average_checkpoints([paths[0], p], tmp_path / "x.ckpt")
    # not a checkpoint
    torch.save({"weights": torch.ones(1)}, p)
    with pytest.raises(UserError, match="no state_dict"):
        average_checkpoints([paths[0], p], tmp_path / "x.ckpt")
    p.write_text("garbage")
    with pytest.raises(UserError, match=r"missing\.ckpt"):  # read_state's refusal, naming the file
        average_checkpoints([paths[0], p], tmp_path / "x.ckpt")
    with pytest.raises(UserError, match="not a prunelab checkpoint"):
        average_checkpoints([tmp_path / "absent.ckpt"], tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()
