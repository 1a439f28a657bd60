"""`hardware=fsdp` (FSDP2, torch's fully_shard, through Lightning's ModelParallelStrategy) on two CPU processes with
gloo, against one process that sees the same examples per optimizer step.

Two processes each take every second batch of prunelab's batch sampler and average their gradients, so a step of the
FSDP run is the mean of the gradients of batches 2k and 2k+1: exactly what one process computes with
`trainer.accumulate_grad_batches=2` (each micro-batch's mean loss halved and summed). Without dropout the two runs
must train the same weights (up to the order of float additions in the gradient reduction) and, since masks are
ranked on whole matrices, reach the same masks. The FSDP run also shards a distillation teacher and recomputes each
layer's activations (activation checkpointing), neither of which may change a number."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from prunelab.export import export_run
from prunelab.pruning.schedule import is_pruning_step, pruning_window
from prunelab.training.io import checkpoint_masks
from prunelab.training.load import load_run
from tests.e2e.conftest import train, train_here

LAYERS = 2
# a Llama-shaped decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention), 6 steps of 4 windows of 16 tokens
LM = [
    "data=synthetic_lm",
    "model=decoder_tiny",
    "model.d_model=32",
    "model.d_ff=64",
    f"model.dec_layers={LAYERS}",
    "data.train_sentences=300",
    "data.valid_sentences=20",
    "data.test_sentences=20",
    "data.seq_len=16",
    "data.max_tokens=64",
    "trainer.val_check_interval=3",
    "trainer.enable_progress_bar=false",
    "logger=none",
    "task.warmup_steps=1",
    "task.lr=0.01",  # large steps: the weights move far more than any rounding difference
]
STEPS = 6
MP = ["pruner=mp", "sparsity=0.5", "pruner.frequency=1"]
FSDP = ["hardware=fsdp", "hardware.accelerator=cpu", "hardware.devices=2", "hardware.precision=32-true"]


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_equals_one_process(tmp_path: Path) -> None:
    teacher = train_here(tmp_path / "teacher", *LM, "pruner=none", "trainer.max_steps=2")
    assert teacher.returncode == 0, teacher.stderr
    common = [
        *LM,
        *MP,
        f"trainer.max_steps={STEPS}",
        f"task.distill.teacher={teacher.dir}",
        "task.distill.hidden_weight=1",
    ]
    sharded = train(tmp_path / "fsdp", *common, *FSDP, "hardware.strategy.activation_checkpointing=true")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    single = train_here(tmp_path / "one", *common, "trainer.accumulate_grad_batches=2")
    assert single.returncode == 0, single.stderr

    res = sharded.results
    assert (res["trainer"]["strategy"], res["trainer"]["devices"]) == ("FSDP2Strategy", 2)
    fsdp = res["trainer"]["fsdp"]
    # one FSDP unit per decoder layer plus the root; each rank holds half of every parameter (even row counts)
    assert fsdp["model"] == {"units": LAYERS + 1, "checkpointed_layers": LAYERS, "local_fraction": 0.5}
    assert fsdp["teacher"] == {"units": LAYERS + 1, "checkpointed_layers": 0, "local_fraction": 0.5}
    # every pruning step ranked whole matrices on both ranks and found the same masks
    start, end = pruning_window(STEPS, 0.2, 0.7)
    assert res["ddp"] == {"world_size": 2, "mask_checks": sum(is_pruning_step(s, start, end, 1) for s in range(1, 7))}

    one = torch.load(single.dir / "checkpoints/round_0/last.ckpt", weights_only=True)["state_dict"]
    two = torch.load(sharded.dir / "checkpoints/round_0/last.ckpt", weights_only=True)["state_dict"]
    assert two.keys() == one.keys()  # the names of an unsharded run: no wrapper prefixes
    init = torch.load(single.dir / "init.pt", weights_only=True)
    moved = max(float((one[f"model.{k}"] - v).abs().max()) for k, v in init.items() if v.is_floating_point())
    assert moved > 0.02
    for key, value in one.items():
        # the order of float additions in the gradient reduction only; the tied embedding (also the output head) has
        # rows whose gradients are nearly zero, where Adam's division by sqrt(v) turns rounding into 1e-4 of a weight
        atol = 1e-3 if key == "model.embed.weight" else 1e-5
        torch.testing.assert_close(two[key], value, rtol=0, atol=atol, msg=key)
    masks, masks_one = checkpoint_masks(two), checkpoint_masks(one)
    assert len(masks) == 7 * LAYERS and all(torch.equal(masks[n], masks_one[n]) for n in masks)
    for name, mask in masks.items():
        assert float((mask == 0).float().mean()) == 0.5  # MP's per-matrix target, on the whole matrix
        assert bool((two[f"model.{name}"][mask == 0] == 0).all())  # applied to every rank's rows
    for key in ("val/ppl", "test/ppl"):
        assert res["metrics"][key] == pytest.approx(single.results["metrics"][key], rel=1e-5)

    # the checkpoint is an ordinary prunelab checkpoint: load_run (ckpt=, the studies) and the export read it
    run = load_run(sharded.dir)
    best = torch.load(res["best_checkpoint"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[f"model.{k}"]) for k, v in run.model.state_dict().items() if f"model.{k}" in best)
    _, stats = export_run(sharded.dir, tmp_path / "model.sparse.pt")
    assert stats["nonzeros"] == sum(int(m.sum()) for m in checkpoint_masks(best).values())


def test_fsdp_refuses_pruners_that_rewind_or_remove_structure(tmp_path: Path) -> None:
    """Refused before any process starts, in one line naming the way that works."""
    run = train_here(tmp_path / "run", *LM, *FSDP, "pruner=slt", "trainer.max_steps=2")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: hardware=fsdp trains with pruner=none, mp or random; StabilizedLotteryTicketPruner rewinds weights "
        "or removes structure between rounds, which prunelab does only on whole tensors (use hardware=ddp)"
    ]


def test_lightning_fsdp1_strategy_refuses_the_cpu() -> None:
    """Why hardware=fsdp is built on ModelParallelStrategy (FSDP2): Lightning's FSDPStrategy (FSDP1) takes GPUs only,
    so it could never be tested here."""
    with pytest.raises(ValueError, match="The strategy `fsdp` requires a GPU accelerator"):
        L.Trainer(strategy="fsdp", accelerator="cpu", devices=2, logger=False)
