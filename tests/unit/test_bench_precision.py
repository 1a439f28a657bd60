"""The precision section of `make bench` on a CPU without bf16 units: the matmul peaks are measured first and, where
bf16 runs at under twice fp32's rate (converted and computed in fp32), the bf16 training and decoding rows are
skipped with the peaks as the reason, instead of minutes of emulated bf16 (issue 41)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import precision  # noqa: E402


@pytest.mark.parametrize(("fp32", "bf16", "units"), [(100e9, 90e9, False), (100e9, 199e9, False), (100e9, 200e9, True)])
def test_bf16_units_need_twice_the_fp32_peak(fp32: float, bf16: float, units: bool) -> None:
    got, note = precision.bf16_units({"fp32": fp32, "bf16": bf16}, 512)
    assert got is units
    assert f"fp32 {fp32 / 1e9:.0f}, bf16 {bf16 / 1e9:.0f} GFLOP/s" in note


def test_without_bf16_units_nothing_is_trained_or_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "peaks", lambda n=2048: {"fp32": 120e9, "bf16": 60e9})

    def must_not_run(*a: object, **k: object) -> None:
        raise AssertionError("trained or decoded on a CPU without bf16 units")

    monkeypatch.setattr(precision, "build_run", must_not_run)
    monkeypatch.setattr(precision, "compose", must_not_run)
    [row] = precision.training_and_decoding("transformer_base", 4096, 4, 2, 64, 20)
    assert row.name == "bf16 matmul peak / fp32 matmul peak" and row.value == pytest.approx(0.5)
    assert row.note.startswith("no bf16 units") and "rows skipped" in row.note
