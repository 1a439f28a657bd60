"""A compact form for masked weight matrices: a bitmask of the kept entries plus the kept values, in order.

One masked tensor packs into three tensors (so a file of them loads with `torch.load(weights_only=True)`):

    shape   int64 (ndim,)           the tensor's shape
    bits    uint8 (ceil(numel/8),)  the mask, 1 bit per entry in row-major order, 8 entries per byte with the
                                    first entry in the most significant bit (numpy.packbits' default order);
                                    the last byte is padded with zero bits
    values  (nnz,)                  the entries where the mask is 1, in row-major order, in the stored dtype

A matrix therefore needs `bitmask_bytes(mask, value_bytes)` = ceil(numel/8) + nnz * value_bytes + 8 * ndim
bytes of payload. At 90% sparsity in fp32 that is 0.125/4 + 0.1 ≈ 0.131 of the dense bytes (CSC with int32
indices needs at least 0.2), 0.081 in fp16 or bf16.

Pruned entries come back as +0.0. `weight * mask` gives -0.0 where a negative weight is masked; the two are
equal (`torch.equal`), and the kept entries are bit-identical when the values are stored in fp32.

`pack_state` / `unpack_state` do the same for a whole state dict: the masked tensors are packed and every
other tensor is kept dense. A storage dtype (fp32, fp16 or bf16) applies to every floating tensor, the
packed values and the dense tensors alike (the reduced precision is the point of asking for it); integer
tensors (e.g. `head_ids`) are never cast. The packed state records the storage dtype and each floating
tensor's original dtype, and `unpack_state` casts back to it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

FLOAT_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)  # bit i of a byte holds entry 7 - i: most significant first


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32", "float16", ... : the name a packed state records (plain strings load with weights_only)."""
    for name, d in FLOAT_DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"unsupported storage dtype {dtype}: use one of {', '.join(FLOAT_DTYPES)}")


def _dtype(name: str) -> torch.dtype:
    if name not in FLOAT_DTYPES:
        raise ValueError(f"unknown dtype {name!r} in a packed state (expected one of {', '.join(FLOAT_DTYPES)})")
    return FLOAT_DTYPES[name]


def _kept(mask: Tensor) -> Tensor:
    """The mask as a bool tensor; a mask holding anything but 0 and 1 is refused (it would scale weights)."""
    if mask.dtype == torch.bool:
        return mask
    kept = mask != 0
    if not bool((mask[kept] == 1).all()):  # NaN counts as kept here and fails the test
        raise ValueError("a mask must hold only 0 and 1")
    return kept


def _cast(values: Tensor, dtype: torch.dtype) -> Tensor:
    """values in `dtype`; refuses a cast that turns finite values infinite (e.g. |w| > 65504 in fp16)."""
    out = values.to(dtype)
    if out.dtype != values.dtype and not torch.equal(torch.isfinite(out), torch.isfinite(values)):
        raise ValueError(f"values out of the range of {dtype}: casting them would give inf")
    return out


def pack_bits(kept: Tensor) -> Tensor:
    """A bool tensor -> uint8 (ceil(numel/8),), row-major, most significant bit first (numpy.packbits)."""
    flat = kept.reshape(-1).to(torch.uint8)
    flat = F.pad(flat, (0, (-flat.numel()) % 8))
    return (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: Tensor, numel: int) -> Tensor:
    """The inverse of pack_bits: bool (numel,)."""
    if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != (numel + 7) // 8:
        raise ValueError(f"a bitmask of {numel} entries is {(numel + 7) // 8} uint8 bytes, got {tuple(bits.shape)}")
    return ((bits[:, None] >> _SHIFTS.to(bits.device)) & 1).reshape(-1)[:numel].bool()


def pack(weight: Tensor, mask: Tensor, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """`weight * mask` as {"shape", "bits", "values"} (see the module docstring); values in `dtype`
    (default: the weight's own dtype). The mask holds 0/1 (any dtype) or bools and has the weight's shape."""
    if mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"only floating tensors can be packed, got {weight.dtype}")
    dtype = dtype or weight.dtype
    dtype_name(dtype)  # a clear error for an unsupported storage dtype
    kept = _kept(mask)
    return {
        "shape": torch.tensor(weight.shape, dtype=torch.int64),
        "bits": pack_bits(kept),
        "values": _cast(weight.reshape(-1)[kept.reshape(-1)], dtype).contiguous(),
    }


def unpack(packed: dict[str, Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """The dense tensor, in `dtype` (fp32 by default): bit-identical to `weight * mask` (pruned entries +0.0)
    when the values were stored in fp32, else the stored values cast back."""
    shape = [int(s) for s in packed["shape"].tolist()]
    numel = 1
    for s in shape:
        numel *= s
    kept = unpack_bits(packed["bits"], numel)
    values = packed["values"]
    if values.dim() != 1 or values.numel() != int(kept.sum()):
        raise ValueError(f"a bitmask with {int(kept.sum())} kept entries needs as many values, got {values.numel()}")
    out = torch.zeros(numel, dtype=dtype, device=values.device)
    out[kept.to(values.device)] = values.to(dtype)
    return out.view(shape)


def bitmask_bytes(mask: Tensor, value_bytes: int = 4) -> int:
    """Bytes of payload this format needs for a tensor: ceil(numel/8) for the bitmask, nnz * value_bytes for the
    kept values, and 8 per dimension for the int64 shape (the file format's own overhead, e.g. torch.save's
    zip headers, is not counted; the same convention as `prunelab.pruning.masks.csc_bytes`)."""
    return (mask.numel() + 7) // 8 + int(mask.count_nonzero()) * value_bytes + 8 * mask.dim()


def packed_bytes(packed: dict[str, Tensor]) -> int:
    """Payload bytes of one packed tensor (equals bitmask_bytes of its mask at its values' element size)."""
    return sum(t.numel() * t.element_size() for t in packed.values())


def pack_state(
    state: dict[str, Tensor], masks: dict[str, Tensor], dtype: torch.dtype | None = torch.float32
) -> dict[str, Any]:
    """A state dict with each masked tensor packed (`masks` is keyed by the state's own keys) and every other
    tensor dense. `dtype` is the storage dtype of every floating tensor (None: each keeps its own). Returns
    {"dtype": name or None, "keys": the state's keys in order, "orig_dtypes": {key: dtype name} of the floating
    tensors, "dense": {key: tensor}, "sparse": {key: pack(...)}}: strings, lists, dicts and tensors only."""
    unknown = [k for k in masks if k not in state]
    if unknown:
        raise ValueError(f"masks for tensors the state does not have: {', '.join(unknown[:3])}")
    if dtype is not None:
        dtype_name(dtype)
    dense, sparse, orig = {}, {}, {}
    for key, value in state.items():
        if value.is_floating_point():
            orig[key] = dtype_name(value.dtype)
        if key in masks:
            try:
                sparse[key] = pack(value, masks[key], dtype)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        elif value.is_floating_point() and dtype is not None:
            try:
                dense[key] = _cast(value, dtype)
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
        else:
            dense[key] = value
    return {
        "dtype": None if dtype is None else dtype_name(dtype),
        "keys": list(state),
        "orig_dtypes": orig,
        "dense": dense,
        "sparse": sparse,
    }


def unpack_state(packed: dict[str, Any]) -> dict[str, Tensor]:
    """The dense state dict again, in its original key order, each floating tensor in its original dtype."""
    orig = packed["orig_dtypes"]
    out = {}
    for key in packed["keys"]:
        if key in packed["sparse"]:
            out[key] = unpack(packed["sparse"][key], _dtype(orig[key]))
        elif key in packed["dense"]:
            t = packed["dense"][key]
            out[key] = t.to(_dtype(orig[key])) if key in orig else t
        else:
            raise ValueError(f"a packed state lists {key!r} but holds no tensor for it")
    return out


def state_bytes(packed: dict[str, Any]) -> int:
    """Payload bytes of a packed state: the packed tensors plus the dense ones (no file overhead)."""
    dense = sum(t.numel() * t.element_size() for t in packed["dense"].values())
    return dense + sum(packed_bytes(p) for p in packed["sparse"].values())


def to_csc32(w: Tensor) -> Tensor:
    """`w` as a torch.sparse_csc tensor with int32 indices: the layout of `prunelab export --format csc`, whose
    size results.json reports (`prunelab.pruning.masks.csc_bytes`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "sparse CSC support is in beta"
        s = w.to_sparse_csc()
        return torch.sparse_csc_tensor(s.ccol_indices().int(), s.row_indices().int(), s.values(), s.shape)


def dense_bytes(state: dict[str, Tensor]) -> int:
    """Bytes of a state dict stored dense with fp32 floats (integer buffers at their own size)."""
    return sum(4 * t.numel() if t.is_floating_point() else t.numel() * t.element_size() for t in state.values())
