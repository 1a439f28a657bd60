"""Settings that cannot work are one clear error when the run is built, before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunelab.errors import UserError
from prunelab.training import train
from tests.integration.conftest import run_cfg

LM = ["data=synthetic_lm", "model=decoder_tiny", "logger=csv", "trainer.max_steps=2", "trainer.val_check_interval=1"]


def test_windows_longer_than_the_model_are_refused_at_build_time(tmp_path: Path) -> None:
    """decoder_tiny has 512 positions: a window of 514 tokens feeds it 513 and is refused by name, before the first
    forward pass would fail; 513 (512 inputs) is the longest that fits, checked against the model's own max_len."""
    with pytest.raises(
        UserError, match=r"data\.seq_len=514 feeds 513 tokens a window, more than the model's max_len=512"
    ):
        train(run_cfg([*LM, "data.seq_len=514"]), tmp_path / "long")
    assert not (tmp_path / "long" / "checkpoints").exists()
    res = train(run_cfg([*LM, "data.seq_len=513", "data.train_sentences=300"]), tmp_path / "fits")
    assert res["status"] == "completed" and res["perplexity_protocol"]["seq_len"] == 513
