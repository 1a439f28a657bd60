"""2:4 semi-structured sparsity on a GPU (`prunelab export RUN --format 2:4`, `prunelab.export.load_2of4`).

A run whose masks keep at most 2 of every 4 consecutive inputs of each row (`pruner.pattern=2:4` of the one-shot and
gradual methods) can run its Linear layers with PyTorch's semi-structured sparse tensors
(`torch.sparse.to_sparse_semi_structured`: cuSPARSELt or CUTLASS kernels on NVIDIA GPUs of compute capability 8.0 and
up, fp16 or bf16), which store half the values plus 2-bit indices and multiply faster than dense at large enough
batches (Mishra et al. 2021).

The export file (format key "prunelab-2of4-v1") holds the masked weights dense in fp16 or bf16 and the names of the
matrices the kernels can take: 2:4 masks whose shape meets the kernels' constraints (both dimensions multiples of, and
at least, 32 rows x 64 columns for fp16/bf16). `prunelab.export.load_2of4(path, device)` rebuilds the model on a CUDA
device and turns those weights into semi-structured tensors (`to_2of4`); other matrices stay dense. Without such a GPU
it is one clear error.

Models floor: the tensors and the kernels' constraints only; reading and writing the export file is prunelab.export's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FORMAT_2OF4 = "prunelab-2of4-v1"
N, M = 2, 4
MIN_ROWS, MIN_COLS = 32, 64  # torch's fp16/bf16 constraints for the sparse operand (CUTLASS; cuSPARSELt allows less)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def is_2of4(mask: Tensor) -> bool:
    """Every group of 4 consecutive entries along each row keeps at most 2 (a row length that is a multiple of 4)."""
    if mask.dim() != 2 or mask.shape[1] % M:
        return False
    return bool((mask.reshape(mask.shape[0], -1, M).ne(0).sum(-1) <= N).all())


def fits_kernels(shape: torch.Size | tuple[int, ...]) -> bool:
    rows, cols = shape
    return rows >= MIN_ROWS and cols >= MIN_COLS and rows % MIN_ROWS == 0 and cols % MIN_COLS == 0


def pack_2of4(
    state: dict[str, Tensor], masks: dict[str, Tensor], dtype: torch.dtype
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(state in `dtype` with the masks applied, the 2:4 matrices the kernels take, 2:4 matrices they cannot take
    for their shape). A mask that is not 2:4 is a ValueError naming it."""
    bad = [n for n, m in masks.items() if not is_2of4(m)]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ValueError(f"the mask of {bad[0]}{more} is not 2:4 (prune with pruner.pattern=2:4)")
    if not masks:
        raise ValueError("the run has no masks: nothing to make 2:4 (prune with pruner.pattern=2:4)")
    out = {}
    for name, value in state.items():
        v = value * masks[name] if name in masks else value
        out[name] = v.to(dtype) if v.is_floating_point() else v
    sparse = sorted(n for n in masks if fits_kernels(masks[n].shape))
    return out, sparse, sorted(n for n in masks if n not in sparse)


def cuda_2of4_problem(device: torch.device | str) -> str | None:
    """Why semi-structured tensors cannot run on `device`, or None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"2:4 semi-structured kernels run on CUDA GPUs only, not on {device.type}"
    if not torch.cuda.is_available():
        return "2:4 semi-structured kernels need a CUDA GPU, and none is available"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"2:4 semi-structured kernels need compute capability 8.0 or more; this GPU has {major}.{minor}"
    return None


@torch.no_grad()
def to_2of4(model: nn.Module, names: list[str]) -> int:
    """Turn the weights `names` (on a CUDA device, fp16/bf16, 2:4) into semi-structured sparse tensors; returns how
    many were converted."""
    from torch.sparse import to_sparse_semi_structured

    params = dict(model.named_parameters())
    for name in names:
        owner, attr = name.rsplit(".", 1)
        module = model.get_submodule(owner)
        setattr(module, attr, nn.Parameter(to_sparse_semi_structured(params[name].detach()), requires_grad=False))
    return len(names)
