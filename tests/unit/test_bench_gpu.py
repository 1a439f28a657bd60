"""The datasheet peaks the `gpu` section of `make bench` divides by: each GPU name torch reports finds its own part,
not a part whose name it contains or that contains it (H100 PCIe is not the SXM H100, A100 not A10, L40S not L4)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from training import bf16_peak  # noqa: E402


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),  # SXM
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 NVL", 835),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A10", 125),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
    ],
)
def test_each_gpu_finds_its_own_dense_bf16_peak(name: str, tflops: float) -> None:
    assert bf16_peak(name) == pytest.approx(tflops * 1e12)


def test_an_unknown_gpu_has_no_peak() -> None:
    assert bf16_peak("Tesla T4") is None  # the section then reports MFU against its measured matmul only
