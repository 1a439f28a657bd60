"""The bitmask sparse format (prunelab.models.sparse_format) and `prunelab export` in both formats, checked
against independent computations (numpy.packbits, hand byte counts, models built without the export)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from prunelab.cli.export import main
from prunelab.export import FORMAT, export_run, load_sparse
from prunelab.models import Transformer, TransformerClassifier, TransformerConfig
from prunelab.models.sparse_format import bitmask_bytes, pack, pack_state, packed_bytes, unpack, unpack_state
from prunelab.models.surgery import prune_heads
from prunelab.training.io import checkpoint_masks, mask_key

SHAPES = [(7,), (3, 5), (13, 11), (64, 48), (2, 3, 5), (1, 1)]
SPARSITIES = [0.0, 0.3, 0.9, 1.0]


def exact_mask(shape: tuple[int, ...], sparsity: float, g: torch.Generator, dtype=torch.float32) -> Tensor:
    """A 0/1 mask with exactly round(sparsity * numel) zeros at random places."""
    n = math.prod(shape)
    mask = torch.ones(n, dtype=dtype)
    mask[torch.randperm(n, generator=g)[: round(sparsity * n)]] = 0
    return mask.view(shape)


def bits_of(t: Tensor) -> Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_fp32_round_trip_is_bit_identical(shape: tuple[int, ...], sparsity: float, mask_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(hash((shape, sparsity)) % 2**31)
    w = torch.randn(shape, generator=g)
    m = exact_mask(shape, sparsity, g, mask_dtype)
    p = pack(w, m)
    m_np = m.numpy().astype(bool).ravel()
    # the layout, computed independently: numpy's packbits and boolean selection
    assert np.array_equal(p["bits"].numpy(), np.packbits(m_np))
    assert np.array_equal(p["values"].numpy(), w.numpy().ravel()[m_np])
    assert p["shape"].tolist() == list(shape)
    out = unpack(p)
    assert out.dtype == torch.float32 and out.shape == w.shape
    assert torch.equal(out, w * m)
    # bit for bit: kept entries exactly the weights, pruned ones +0.0
    assert torch.equal(bits_of(out), bits_of(torch.where(torch.from_numpy(m_np).view(shape), w, torch.zeros(()))))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(13, 11), (64, 48), (7,)])
def test_reduced_precision_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(shape, generator=g)
    m = exact_mask(shape, 0.6, g)
    p = pack(w, m, dtype)
    assert p["values"].dtype == dtype
    assert p["values"].numel() == int(m.sum())
    out = unpack(p)
    assert out.dtype == torch.float32
    assert torch.equal(out, (w * m).to(dtype).float())


def test_bitmask_bytes_is_the_hand_formula() -> None:
    g = torch.Generator().manual_seed(4)
    m = exact_mask((13, 11), 0.5, g)  # 143 entries: 18 bytes of bits (the last one padded), 72 kept
    kept = 143 - round(0.5 * 143)
    assert kept == int(m.sum())
    assert bitmask_bytes(m) == 18 + 4 * kept + 8 * 2
    assert bitmask_bytes(m, value_bytes=2) == 18 + 2 * kept + 16
    assert bitmask_bytes(torch.ones(16)) == 2 + 64 + 8
    w = torch.randn(13, 11, generator=g)
    assert packed_bytes(pack(w, m)) == bitmask_bytes(m)
    assert packed_bytes(pack(w, m, torch.bfloat16)) == bitmask_bytes(m, value_bytes=2)


def _saved_bytes(obj: object) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def test_serialized_size_at_90_percent() -> None:
    g = torch.Generator().manual_seed(5)
    shapes = {
        "q": (512, 512),
        "k": (512, 512),
        "v": (512, 512),
        "o": (512, 512),
        "ff1": (2048, 512),
        "ff2": (512, 2048),
    }
    weights = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    masks = {n: exact_mask(s, 0.9, g) for n, s in shapes.items()}
    dense = _saved_bytes(weights)
    assert dense >= 4 * sum(math.prod(s) for s in shapes.values())
    fp32 = _saved_bytes({n: pack(weights[n], masks[n]) for n in shapes}) / dense
    fp16 = _saved_bytes({n: pack(weights[n], masks[n], torch.float16) for n in shapes}) / dense
    bf16 = _saved_bytes({n: pack(weights[n], masks[n], torch.bfloat16) for n in shapes}) / dense
    assert fp32 <= 0.14  # 0.1 + 1/32 = 0.131 plus the file's overhead
    assert fp16 <= 0.09 and bf16 <= 0.09  # 0.05 + 1/32 = 0.081
    assert fp32 < 0.206 - 0.05  # well under the CSC floor (fp32 values + int32 row indices)


def test_a_wrong_mask_is_refused_clearly() -> None:
    w = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"mask shape \(6, 4\) does not match weight shape \(4, 6\)"):
        pack(w, torch.ones(6, 4))
    with pytest.raises(ValueError, match="only 0 and 1"):
        pack(w, torch.full((4, 6), 0.5))
    with pytest.raises(ValueError, match=r"enc\.0\.weight: mask shape"):
        pack_state({"enc.0.weight": w}, {"enc.0.weight": torch.ones(24)})
    with pytest.raises(ValueError, match="does not have: nope"):
        pack_state({"enc.0.weight": w}, {"nope": torch.ones(4, 6)})
    with pytest.raises(ValueError, match="inf"):
        pack(torch.full((2, 2), 1e6), torch.ones(2, 2), torch.float16)
    p = pack(w, torch.ones(4, 6))
    with pytest.raises(ValueError, match="needs as many values"):
        unpack({**p, "values": p["values"][:-1]})


def test_pack_state_round_trip_and_dtype_policy() -> None:
    g = torch.Generator().manual_seed(6)
    state = {
        "a.weight": torch.randn(9, 7, generator=g),
        "a.bias": torch.randn(9, generator=g),
        "b.weight": torch.randn(5, 3, generator=g),
        "attn.head_ids": torch.tensor([0, 2, 3]),
        "gate": torch.ones(()),
    }
    masks = {"a.weight": exact_mask((9, 7), 0.7, g), "b.weight": exact_mask((5, 3), 0.4, g, torch.bool)}
    packed = pack_state(state, masks)
    buf = io.BytesIO()
    torch.save(packed, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded["dtype"] == "float32" and set(loaded["sparse"]) == set(masks)
    out = unpack_state(loaded)
    assert list(out) == list(state)
    for k, v in state.items():
        ref = v * masks[k] if k in masks else v
        assert out[k].dtype == v.dtype and torch.equal(out[k], ref), k

    half = pack_state(state, masks, torch.float16)
    assert half["dtype"] == "float16"
    assert half["dense"]["a.bias"].dtype == torch.float16  # --dtype applies to dense floats too
    assert half["dense"]["attn.head_ids"].dtype == torch.int64  # never to integer buffers
    out = unpack_state(half)
    for k, v in state.items():
        ref = v * masks[k] if k in masks else v
        ref = ref.to(torch.float16).to(v.dtype) if v.is_floating_point() else ref
        assert out[k].dtype == v.dtype and torch.equal(out[k], ref), k


# ---- export of a run ------------------------------------------------------------------------------------------

TINY = {"d_model": 32, "n_heads": 4, "d_ff": 64, "enc_layers": 2, "dec_layers": 2, "dropout": 0.0, "max_len": 64}


def _masks(model: nn.Module, sparsity: float, g: torch.Generator) -> dict[str, Tensor]:
    return {
        f"{n}.weight": exact_mask(tuple(m.weight.shape), sparsity, g)
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.weight.numel()
    }


def _fake_run(run_dir: Path, model: nn.Module, masks: dict[str, Tensor], model_config: dict) -> None:
    """A completed run folder the way training leaves it: results.json and a Lightning-style checkpoint whose
    state_dict has the model under `model.` and the pruner's masks under `pruner.mask__<name with __>`."""
    run_dir.mkdir(parents=True)
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    state.update({mask_key(n): m for n, m in masks.items()})
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": state, "epoch": 3}, ckpt)
    args = {"vocab_size": model.embed.weight.shape[0], "pad_id": 0}  # what training records as model_args
    if hasattr(model, "num_classes"):
        args["num_classes"] = model.num_classes
    results = {
        "status": "completed",
        "best_checkpoint": str(ckpt),
        "model_args": args,
        "config": {"model": model_config},
    }
    (run_dir / "results.json").write_text(json.dumps(results))


def _masked_reference(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    return model.eval()


def _tiny_translation(tmp_path: Path, heads: dict[str, list[int]] | None = None) -> tuple[Path, Transformer]:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, **TINY))
    if heads:
        prune_heads(model, heads)
    masks = _masks(model, 0.7, torch.Generator().manual_seed(7))
    cfg = {"_target_": "prunelab.models.build_transformer", "_partial_": True, **TINY, "pre_norm": True}
    _fake_run(tmp_path / "run", model, masks, cfg)
    return tmp_path / "run", _masked_reference(model, masks)


@pytest.mark.parametrize("fmt", ["bitmask", "csc"])
def test_export_reloads_to_identical_outputs(tmp_path: Path, fmt: str) -> None:
    run, ref = _tiny_translation(tmp_path)
    out, stats = export_run(run, fmt=fmt)
    assert out == run / "model.sparse.pt" and stats["file"] == str(out)
    state = torch.load(out, weights_only=True)  # tensors and plain containers only
    assert state["format"] == ("prunelab-bitmask-v1" if fmt == "bitmask" else FORMAT)
    model = load_sparse(out)
    src = torch.randint(4, 50, (3, 9), generator=torch.Generator().manual_seed(8))
    tgt = torch.randint(4, 50, (3, 6), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(model(src, tgt), ref(src, tgt))
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    masks = checkpoint_masks(ckpt)
    assert stats["sparse_matrices"] == len(masks) == 2 * 6 + 2 * 10  # 4 linear per attention, 2 per ff
    assert stats["nonzeros"] == sum(int(m.sum()) for m in masks.values())
    dense = sum(
        4 * v.numel() if v.is_floating_point() else v.numel() * v.element_size() for v in ref.state_dict().values()
    )
    assert stats["dense_bytes"] == dense
    assert stats["file_bytes"] == out.stat().st_size
    assert stats["ratio"] == pytest.approx(stats["file_bytes"] / dense)


def test_export_dtypes_and_formats_shrink_the_file(tmp_path: Path) -> None:
    run, ref = _tiny_translation(tmp_path)
    sizes = {}
    for fmt in ("csc", "bitmask"):
        for dtype in ("fp32", "fp16", "bf16"):
            out, stats = export_run(run, tmp_path / f"{fmt}-{dtype}.pt", fmt=fmt, dtype=dtype)
            sizes[fmt, dtype] = stats["payload_bytes"]
            assert stats["format"] == fmt and stats["dtype"] == dtype
            model = load_sparse(out)
            for k, v in ref.state_dict().items():
                want = v.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]).to(v.dtype)
                assert model.state_dict()[k].dtype == v.dtype and torch.equal(model.state_dict()[k], want), k
    for dtype in ("fp32", "fp16", "bf16"):
        assert sizes["bitmask", dtype] < sizes["csc", dtype]
    assert sizes["bitmask", "fp16"] == sizes["bitmask", "bf16"] < sizes["bitmask", "fp32"]


def test_export_of_a_head_pruned_run(tmp_path: Path) -> None:
    run, ref = _tiny_translation(tmp_path, heads={"enc.0.sa": [1, 3], "dec.1.ea": [0]})
    out, _ = export_run(run)
    model = load_sparse(out)
    assert model.enc[0].sa.head_ids.tolist() == [0, 2] and model.dec[1].ea.head_ids.tolist() == [1, 2, 3]
    src = torch.randint(4, 50, (2, 8), generator=torch.Generator().manual_seed(10))
    tgt = torch.randint(4, 50, (2, 5), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert torch.equal(model(src, tgt), ref(src, tgt))


def test_export_of_a_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    cfg = {k: v for k, v in TINY.items() if k != "dec_layers"}
    model = TransformerClassifier(TransformerConfig(vocab_size=40, dec_layers=0, **cfg), 3, "mean")
    masks = _masks(model, 0.8, torch.Generator().manual_seed(12))
    run = tmp_path / "run"
    _fake_run(
        run,
        model,
        masks,
        {"_target_": "prunelab.models.build_classifier", "_partial_": True, "pooling": "mean", **TINY},
    )
    ref = _masked_reference(model, masks)
    loaded = load_sparse(export_run(run)[0])
    assert isinstance(loaded, TransformerClassifier) and loaded.pooling == "mean"
    src = torch.randint(4, 40, (4, 7), generator=torch.Generator().manual_seed(13))
    src[1, 4:] = 0
    with torch.no_grad():
        assert torch.equal(loaded(src), ref(src))


def test_a_first_version_csc_file_still_loads(tmp_path: Path) -> None:
    """The layout the first export wrote: config, dense and int32 CSC tensors, no dtype or model_config."""
    _, ref = _tiny_translation(tmp_path)
    state = ref.state_dict()
    sparse = {}
    for name, mod in ref.named_modules():
        if isinstance(mod, nn.Linear):
            s = state[f"{name}.weight"].to_sparse_csc()
            sparse[f"{name}.weight"] = torch.sparse_csc_tensor(
                s.ccol_indices().int(), s.row_indices().int(), s.values(), s.shape
            )
    blob = {
        "format": FORMAT,
        "config": {"vocab_size": 50, "pad_id": 0, **TINY},
        "dense": {k: v for k, v in state.items() if k not in sparse},
        "sparse": sparse,
    }
    torch.save(blob, tmp_path / "v1.pt")
    model = load_sparse(tmp_path / "v1.pt")
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k


def test_cli_prints_the_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = _tiny_translation(tmp_path)
    assert main([str(run), "--dtype", "bf16", "--out", str(tmp_path / "m.pt")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["format"] == "bitmask" and stats["dtype"] == "bf16" and stats["file"] == str(tmp_path / "m.pt")
    assert {"file_bytes", "dense_bytes", "ratio"} <= set(stats) and stats["ratio"] < 1
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such run folder or checkpoint" in capsys.readouterr().err
