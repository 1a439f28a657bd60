"""Under DDP the masks of all processes are compared after every pruning step (two gloo processes here).
Kept apart, with few imports, because each spawned process imports this module."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunelab.pruning.base import check_ranks_agree


def _compare(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        masks = {"enc.0.ff.w1": torch.ones(4, 6), "enc.0.ff.w2": torch.ones(6, 4)}
        masks["enc.0.ff.w1"][1, 2] = 0
        masks["enc.0.ff.w2"][0, 0] = 0
        results = [f"same: {check_ranks_agree(masks, 0.5)}"]
        if rank == 1:  # the same number of zeros, at another place
            masks["enc.0.ff.w2"][0, 0], masks["enc.0.ff.w2"][5, 3] = 1, 0
        try:
            check_ranks_agree(masks, 0.5)
        except RuntimeError as e:
            results.append(str(e))
        Path(f"{out}.{rank}").write_text("\n".join(results))
    finally:
        dist.destroy_process_group()


def test_masks_are_compared_across_ddp_processes(tmp_path: Path) -> None:
    out = str(tmp_path / "result")
    mp.spawn(_compare, args=(f"file://{tmp_path / 'rendezvous'}", out), nprocs=2, join=True)
    expected = "same: True\nDDP ranks hold different masks after pruning to sparsity 0.5000: enc.0.ff.w2"
    assert [Path(f"{out}.{r}").read_text() for r in (0, 1)] == [expected, expected]  # both stop, same message


def test_one_process_has_nothing_to_compare() -> None:
    assert check_ranks_agree({"w": torch.ones(2, 2)}, 0.5) is False
