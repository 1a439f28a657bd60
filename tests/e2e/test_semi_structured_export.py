"""`prunelab export RUN --format 2:4`: the 2:4 check against brute force, the kernels' shape rule, the file a 2:4 run
gives (masked weights in fp16/bf16, the matrices the kernels take), one clear error for runs without 2:4 masks and
for loading without a suitable GPU; on a GPU with semi-structured kernels, the loaded model's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.export import export, load_2of4
from prunelab.models.semi_structured import cuda_2of4_problem, fits_kernels, is_2of4
from prunelab.training import load_run
from prunelab.training.io import read_state
from tests.e2e.conftest import train_here


def brute_2of4(mask: torch.Tensor) -> bool:
    rows, cols = mask.shape
    if cols % 4:
        return False
    return all(int((mask[r, c : c + 4] != 0).sum()) <= 2 for r in range(rows) for c in range(0, cols, 4))


@pytest.mark.parametrize("seed", range(6))
def test_the_2of4_check_agrees_with_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(6, 16)
    for r in range(6):  # exactly 2 of each 4, then (odd seeds) one group with a third kept entry
        for c in range(0, 16, 4):
            mask[r, c + torch.randperm(4, generator=g)[:2]] = 1.0
    if seed % 2:
        mask[seed % 6, 4 * (seed % 4) : 4 * (seed % 4) + 3] = 1.0
    assert is_2of4(mask) == brute_2of4(mask) == (seed % 2 == 0)
    assert not is_2of4(torch.ones(4, 6)) and not brute_2of4(torch.ones(4, 6))  # a row length not a multiple of 4


def test_the_kernels_shape_rule() -> None:
    assert fits_kernels((32, 64)) and fits_kernels((128, 512))
    assert not fits_kernels((16, 64)) and not fits_kernels((32, 96)) and not fits_kernels((48, 128))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("semi")
    shape = ["experiment=smoke", "logger=csv", "model.d_model=64", "model.d_ff=128"]
    dense = train_here(root / "dense", *shape)
    assert dense.returncode == 0, dense.stderr[-3000:]
    nm = ["pruner=oneshot", "pruner.method=magnitude", "sparsity=0.5", f"ckpt={dense.dir}", "trainer.max_steps=0"]
    two_four = train_here(root / "2of4", *shape, *nm, "pruner.pattern=2:4")
    assert two_four.returncode == 0, two_four.stderr[-3000:]
    unstructured = train_here(root / "unstructured", *shape, *nm)
    assert unstructured.returncode == 0, unstructured.stderr[-3000:]
    return {"dense": dense.dir, "2of4": two_four.dir, "unstructured": unstructured.dir}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_a_2of4_run_exports_its_masked_weights_and_the_kernel_matrices(runs: dict[str, Path], dtype: str) -> None:
    out, stats = export(runs["2of4"], runs["2of4"] / f"model.{dtype}.2of4.pt", fmt="2:4", dtype=dtype)
    blob = read_state(out)
    kept = {"fp32": torch.float16, "bf16": torch.bfloat16}[dtype]  # the kernels take fp16 or bf16 only
    assert stats["dtype"] == blob["dtype"] == ("bf16" if dtype == "bf16" else "fp16")
    model = load_run(runs["2of4"]).model
    state = model.state_dict()
    masked = [n for n, w in state.items() if n.endswith("weight") and w.dim() == 2 and "embed" not in n]
    assert masked and set(stats["semi_structured"]) | set(stats["dense_2of4"]) == set(masked)
    for name in masked:
        w = blob["state"][name]
        assert w.dtype == kept and is_2of4(w)
        torch.testing.assert_close(w.float(), state[name].to(kept).float())  # the run's own (masked) weights
        assert (name in stats["semi_structured"]) == fits_kernels(w.shape)
    assert stats["semi_structured"]  # d_model 64, d_ff 128: the feed-forward and attention matrices fit


def test_runs_without_2of4_masks_are_one_clear_error(runs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="is not 2:4"):
        export(runs["unstructured"], fmt="2:4")
    with pytest.raises(UserError, match="no masks"):
        export(runs["dense"], fmt="2:4")


@pytest.mark.skipif(cuda_2of4_problem("cuda") is None, reason="a GPU with semi-structured kernels is here")
def test_loading_without_a_suitable_gpu_is_one_clear_error(runs: dict[str, Path]) -> None:
    out, _ = export(runs["2of4"], fmt="2:4")
    with pytest.raises(UserError, match="2:4 semi-structured kernels"):
        load_2of4(out)


@pytest.mark.skipif(cuda_2of4_problem("cuda") is not None, reason="needs a CUDA GPU of compute capability >= 8.0")
def test_on_a_gpu_the_semi_structured_model_computes_the_masked_model(runs: dict[str, Path]) -> None:
    out, stats = export(runs["2of4"], fmt="2:4")
    sparse = load_2of4(out, "cuda")
    dense = load_run(runs["2of4"]).model.to("cuda", torch.float16).eval()
    src = torch.randint(4, dense.cfg.vocab_size, (64, 16), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(sparse(src, src), dense(src, src), atol=2e-2, rtol=2e-2)
    assert type(sparse.get_submodule(stats["semi_structured"][0].rsplit(".", 1)[0]).weight).__name__.startswith(
        "SparseSemiStructured"
    )
