"""Safetensors files read and written tensor by tensor (the layer-streamed pruning's I/O, prunelab.pruning.stream): a
Hugging Face folder's weights (model.safetensors, or the shards model.safetensors.index.json names) read a few tensors
at a time, each straight from its file into its own memory, and a part of a model written from its tensors' own
memory. The format: an 8-byte little-endian header length, a JSON header ({key: dtype, shape, data_offsets}, padded
with spaces to 8 bytes), the data."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prunelab.errors import UserError

INDEX = "model.safetensors.index.json"


class SafetensorsCheckpoint:
    """A Hugging Face folder's safetensors files (model.safetensors, or the shards its index names), read a few tensors
    at a time, each straight from the file into its own tensor (`readinto`): nothing else of the file becomes resident.
    (A memory map, safetensors' `safe_open`, would keep the pages it touched resident while open and add them to each
    copy: the largest tensor, an embedding table, twice at the peak.)"""

    def __init__(self, folder: Path):
        self.folder = folder
        self.headers: dict[str, tuple[int, dict[str, Any]]] = {}
        if (folder / "model.safetensors").is_file():
            self.where = dict.fromkeys(self.header("model.safetensors")[1], "model.safetensors")
        elif (folder / INDEX).is_file():
            try:
                self.where = dict(json.loads((folder / INDEX).read_text())["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{folder / INDEX}: not a sharded checkpoint's index ({type(e).__name__})") from None
            if missing := sorted(s for s in set(self.where.values()) if not (folder / s).is_file()):
                raise UserError(f"{folder}: shard {missing[0]} named by {INDEX} is missing")
        else:
            raise UserError(
                f"pruner.stream=true reads a checkpoint's safetensors files one layer at a time, and {folder} has none "
                "(model.safetensors or model.safetensors.index.json); save it with safetensors (transformers' "
                "save_pretrained does) or prune it in memory (pruner.stream=false)"
            )

    def header(self, file: str) -> tuple[int, dict[str, Any]]:
        """(where the file's data starts, its header: {key: {dtype, shape, data_offsets}}), read once."""
        if file not in self.headers:
            path = self.folder / file
            try:
                with open(path, "rb") as f:
                    (n,) = struct.unpack("<Q", f.read(8))
                    header = json.loads(f.read(n))
            except (OSError, ValueError, struct.error) as e:
                raise UserError(f"{path}: not a safetensors file ({type(e).__name__})") from None
            header.pop("__metadata__", None)
            self.headers[file] = (8 + n, header)
        return self.headers[file]

    def read(self, keys: Sequence[str], device: torch.device) -> dict[str, Tensor]:
        """{key: tensor} on `device`, floating point upcast to fp32 as the in-memory import does."""
        out: dict[str, Tensor] = {}
        for k in keys:
            file = self.where[k]
            start, header = self.header(file)
            if k not in header:
                raise UserError(f"{self.folder / file}: lacks {k} that {INDEX} puts there")
            info = header[k]
            if info["dtype"] not in DTYPES:
                raise UserError(f"{self.folder / file}: {k} has dtype {info['dtype']}, which prunelab does not read")
            t = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end - begin != t.numel() * t.element_size():
                raise UserError(f"{self.folder / file}: {k}'s bytes do not fit its shape {info['shape']}")
            if t.numel():
                buffer = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                with open(self.folder / file, "rb", buffering=0) as f:
                    f.seek(start + begin)
                    done = 0
                    while done < len(buffer):
                        got = f.readinto(buffer[done:])
                        if not got:
                            raise UserError(f"{self.folder / file}: ends inside {k}")
                        done += got
            out[k] = t.to(device, torch.float32 if t.is_floating_point() else t.dtype)
            del t
        return out


# safetensors' dtype names
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
SAFETENSORS_DTYPES = {v: k for k, v in DTYPES.items()}


def save_safetensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """`tensors` (CPU, contiguous) as a safetensors file, written tensor by tensor from their own memory: safetensors'
    save_file first copies every tensor into bytes, one part's size more at the peak. The format: an 8-byte
    little-endian header length, the JSON header (dtype, shape, byte offsets; padded with spaces to 8 bytes), the
    data."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for t in tensors.values():
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
