from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from prunelab.models import Transformer, build_transformer
from tests.hf_seq2seq import seq2seq_checkpoint  # noqa: F401  (tiny T5/BART/mBART/M2M100/NLLB folders, once a session)

if "PYTEST_XDIST_WORKER" in os.environ:  # tests run side by side, one per core: one thread each, as train.py
    torch.set_num_threads(1)  # subprocesses get through OMP_NUM_THREADS (tests/e2e/conftest.py)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`--dist loadgroup` sends the tests of one `xdist_group` to one worker by the "@group" suffix pytest-xdist (3.8)
    appends to each item's `_nodeid`; pytest 9.2 reads a node's id from `_id` instead, so without this the suffix is
    lost, every grouped module runs its module-scoped set-up (trained fixtures) on both workers, and `make test` pays
    twice. Copy the suffixed id where this pytest reads it (a no-op where the two agree)."""
    for item in items:
        suffixed = getattr(item, "_nodeid", None)
        if isinstance(suffixed, str) and "@" in suffixed and item.nodeid != suffixed and hasattr(item, "_id"):
            from _pytest.nodes import coerce_node_id  # pytest >= 9.2 only (an older one never gets here)

            item._id = coerce_node_id(suffixed)


@pytest.fixture
def tiny_model() -> Transformer:
    torch.manual_seed(0)
    model = build_transformer(
        vocab_size=50, d_model=32, n_heads=4, d_ff=64, enc_layers=2, dec_layers=2, dropout=0.0, max_len=64
    )
    return model.eval()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 50, (3, 7), generator=g)
    src[1, 5:] = 0  # padding
    src[:, -1] = 2
    tgt_in = torch.randint(4, 50, (3, 6), generator=g)
    tgt_in[:, 0] = 1
    return {"src": src, "tgt_in": tgt_in}


def quiet_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    """A Lightning Trainer as the in-process tests use it: prunelab's fixed settings, nothing logged, saved or shown."""
    from prunelab.config import TRAINER_FIXED

    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(default_root_dir=root, **{**TRAINER_FIXED, **quiet, **kwargs})
