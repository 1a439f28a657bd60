"""Layer-streamed one-shot pruning (`pruner.stream=true`, prunelab.pruning.stream) against the in-memory pruning of
the same checkpoint: the same masks and the same weights, bit for bit, written as the same Hugging Face tensors as
`prunelab.hf.export` writes of the in-memory pruned model (checkpoints saved here by transformers itself); a peak
resident memory below half the model's own size while the in-memory load of the same checkpoint is measured above
it; `pruner.stream=true` from the command line's code path, scored as the in-memory run; and one error line where
streaming cannot apply."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from prunelab.data.windows import IGNORE
from prunelab.errors import UserError
from prunelab.hf.export import export_hf
from prunelab.hf.families import load_hf
from prunelab.pruning.calibration import CalibrationSet
from prunelab.pruning.memory import peak_memory, rss_bytes
from prunelab.pruning.oneshot import OneShotPruner
from prunelab.pruning.stream import load_streamed, stream_nll, stream_prune
from tests import hf_checkpoints as H
from tests.tiny import hf_llama_config

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from stream_memory import windows, write_random_llama  # noqa: E402

CPU = torch.device("cpu")


def saved_llama(folder: Path, shards: bool = False, gemma: bool = False, bf16: bool = False, **changes: object) -> Path:
    """A 3-layer Llama (4 query heads over 2 K/V groups), or Gemma 2 (sandwich norms, soft-caps, a tied head), saved
    by transformers; `shards`: in several files; `bf16`: in bf16 (read as fp32 both ways)."""
    torch.manual_seed(0)
    if gemma:
        config = transformers.Gemma2Config(
            vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=8,
        )  # fmt: skip
        model = transformers.Gemma2ForCausalLM(config)
        with torch.no_grad():  # norms away from their init, so that one left out shows
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(torch.randn_like(p) * 0.3)
    else:
        model = transformers.LlamaForCausalLM(hf_llama_config(num_hidden_layers=3, **changes))
    if bf16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(folder, **({"max_shard_size": "20KB"} if shards else {}))
    return folder


def lm_windows() -> list[dict[str, torch.Tensor]]:
    """Two batches of windows as the data collates them, the shorter window of the second padded."""
    g = torch.Generator().manual_seed(2)
    out = []
    for b, t in ((3, 12), (2, 16)):
        w = torch.randint(0, 40, (b, t + 1), generator=g)
        real = torch.ones(b, t, dtype=torch.bool)
        real[-1, t - 5 :] = False
        out.append({"src": w[:, :-1].clone(), "target": w[:, 1:].clone(), "real": real})
    return out


def in_memory(source: Path, pruner: OneShotPruner, batches: list[dict]) -> torch.nn.Module:
    """The checkpoint imported whole and pruned by `pruner` in memory (the path of `pruner.stream=false`)."""
    model = load_hf(source).eval()
    pruner.attach(model)
    pruner.use_data(object())  # the calibration set is given, not drawn from a data module
    pruner.calibration_data = lambda: CalibrationSet(batches, {"examples": len(batches), "tokens": 0})  # type: ignore[method-assign]
    pruner.prune(model)
    return model


def shards(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(safetensors_torch.load_file(str(f)))
    return out


CASES = {
    "sparsegpt": ({"method": "sparsegpt"}, {}),
    "sparsegpt_2_4_sharded_bf16": (
        {"method": "sparsegpt", "pattern": "2:4", "block": 16},
        {"shards": True, "bf16": True},
    ),
    "wanda_tied_embeddings": ({"method": "wanda", "prune_embeddings": True}, {"tie_word_embeddings": True}),
    "magnitude": ({"method": "magnitude"}, {}),
    "gemma2_sparsegpt": ({"method": "sparsegpt"}, {"gemma": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_equals_in_memory(case: str, tmp_path: Path) -> None:
    """Each layer is read from the files on its turn, calibrated on what the pruned layers before it give, pruned by
    the same solver and written out: every mask and every weight equals the in-memory pruning's, and the folder holds
    exactly the tensors (names and values) and config.json that exporting the in-memory pruned model writes.
    A stream that calibrated a layer on the unpruned layers' outputs, dropped the rotary positions or a norm, read
    the wrong shard or left the embedding unpruned before the layers would differ."""
    settings, saving = CASES[case]
    source = saved_llama(tmp_path / "source", **saving)
    batches = lm_windows()
    sparsity = 0.5
    pruner = OneShotPruner(sparsity=sparsity, device="cpu", **settings)
    model = in_memory(source, pruner, batches)
    export_hf(model, source, tmp_path / "exported", masks=pruner.masks)

    report = stream_prune(
        OneShotPruner(sparsity=sparsity, device="cpu", **settings), source, tmp_path / "streamed", batches, CPU
    )
    streamed = tmp_path / "streamed"
    assert report["stream"]["parts"] == 3 + 2  # the inputs, three layers, the final norm and head
    assert len(list(streamed.glob("model-*-of-00005.safetensors"))) == 5

    names = [n for n, _ in model.named_parameters()]
    weights, masks = load_streamed(streamed, names, CPU)
    assert sorted(masks) == sorted(pruner.masks) and len(masks) == 3 * 7 + settings.get("prune_embeddings", 0)
    for n, m in pruner.masks.items():
        assert torch.equal(masks[n], m.bool()), n
        assert abs(1 - float(m.mean()) - sparsity) < 0.02, n  # it pruned
    for n, p in model.named_parameters():
        assert torch.equal(weights[n], p.detach()), n
    want, got = shards(tmp_path / "exported"), shards(streamed)
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert json.loads((streamed / "config.json").read_text()) == json.loads(
        (tmp_path / "exported" / "config.json").read_text()
    )
    # transformers reads the folder (sharded, by its index) as the model prunelab computes
    hf = transformers.AutoModelForCausalLM.from_pretrained(streamed).eval()
    src = batches[0]["src"]
    with torch.no_grad():
        torch.testing.assert_close(hf(src).logits, model(src), rtol=1e-4, atol=1e-5)


def test_streamed_peak_memory_is_below_half_the_model(tmp_path: Path) -> None:
    """A random 8-layer Llama of 100 MB (fp32) pruned by Wanda, streamed: the process's resident memory rises by less
    than half the model's size (one layer is 12 MB), while reading the same checkpoint whole, as the in-memory path
    starts, is measured rising by more than the model: the measurement sees what a whole model costs."""
    if rss_bytes() == 0:
        pytest.skip("no /proc here: resident memory cannot be read")
    # one-time costs (torch's meta kernels, the allocator's arenas, BLAS) paid on a tiny checkpoint first: what is
    # asserted is the memory that grows with the model
    tiny = write_random_llama(tmp_path / "tiny", 64, 96, 2, 4, 2, 100)
    stream_prune(
        OneShotPruner(sparsity=0.5, method="wanda", device="cpu"), tiny, tmp_path / "t", windows(100, 2, 32), CPU
    )
    source = write_random_llama(tmp_path / "big", 512, 1536, 8, 8, 2, 2048)
    report = stream_prune(
        OneShotPruner(sparsity=0.5, method="wanda", device="cpu"), source, tmp_path / "out", windows(2048, 2, 32), CPU
    )
    memory = report["memory"]
    model_bytes = memory["model_bytes"]
    assert model_bytes == 4 * (8 * (2 * 512 * 512 + 2 * 512 * 128 + 3 * 512 * 1536 + 2 * 512) + 2 * 2048 * 512 + 512)
    assert report["stream"]["largest_part_bytes"] < 0.15 * model_bytes
    assert 0 < memory["extra_bytes"] < 0.5 * model_bytes, memory
    with peak_memory(CPU) as whole:
        model = load_hf(source)
    assert whole["extra_bytes"] > model_bytes
    del model


def test_a_run_with_stream_true_scores_as_the_in_memory_run(tmp_path: Path) -> None:
    """`python train.py pruner=oneshot pruner.stream=true model=hf model.path=DIR trainer.max_steps=0`: the run's
    pruned level (weights read back whole from the streamed folder) has the in-memory run's perplexity and masks, and
    results.json says it was streamed; the pruned folder is kept where `pruner.stream_dir` says."""
    from tests.e2e.conftest import train_here

    docs = {"train": H.documents(30, 1), "valid": H.documents(4, 2), "test": H.documents(4, 3)}
    source = H.causal_lm_checkpoint(tmp_path / "llama", docs["train"], "llama", steps=5)
    text = H.write_lm_text(tmp_path / "text", docs)
    args = ["model=hf", f"model.path={source}", "data=lm_text", f"data.dir={text}", "data.seq_len=32", "logger=none"]
    args += ["pruner=oneshot", "pruner.method=wanda", "sparsity=0.5", "trainer.max_steps=0", "pruner.calibration.n=8"]
    memory = train_here(tmp_path / "memory", *args)
    streamed = train_here(
        tmp_path / "streamed", *args, "pruner.stream=true", f"pruner.stream_dir={tmp_path / 'pruned'}"
    )
    assert memory.returncode == 0 and streamed.returncode == 0, streamed.stderr[-2000:]
    a, b = memory.results, streamed.results
    assert b["oneshot"]["stream"]["out"] == str(tmp_path / "pruned") and "auto" not in b["oneshot"]["stream"]
    assert a["oneshot"]["stream"]["auto"]["streamed"] is False  # the default, auto: a tiny model fits in memory
    assert b["oneshot"]["calibration"] == a["oneshot"]["calibration"]
    assert [lv["metrics"]["test/ppl"] for lv in b["levels"]] == [lv["metrics"]["test/ppl"] for lv in a["levels"]]
    assert b["sparsity"] == a["sparsity"]
    assert (tmp_path / "pruned" / "model.safetensors.index.json").is_file()


def test_where_streaming_cannot_apply_is_one_error(tmp_path: Path) -> None:
    pruner = OneShotPruner(sparsity=0.5, method="wanda", device="cpu", stream=True)
    with pytest.raises(UserError, match=r"trainer\.max_steps=6 of recovery"):
        pruner.round_steps(1, 6, True)
    assert pruner.round_steps(1, 0, True) == 0
    bins = saved_llama(tmp_path / "bin")  # the same checkpoint as a torch pickle, as older folders ship
    torch.save(safetensors_torch.load_file(str(bins / "model.safetensors")), bins / "pytorch_model.bin")
    (bins / "model.safetensors").unlink()
    assert load_hf(bins)  # the in-memory import reads it
    with pytest.raises(UserError, match=r"has none \(model\.safetensors or model\.safetensors\.index\.json\)"):
        stream_prune(pruner, bins, tmp_path / "o1", lm_windows(), CPU)
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=40)
    ).save_pretrained(gpt2)
    with pytest.raises(UserError, match="not model_type 'gpt2'"):
        stream_prune(pruner, gpt2, tmp_path / "o2", lm_windows(), CPU)
    untied = saved_llama(tmp_path / "llama")
    with pytest.raises(UserError, match=r"lm_head\.weight lies outside the layers"):
        stream_prune(OneShotPruner(sparsity=0.5, prune_embeddings=True), untied, tmp_path / "o3", lm_windows(), CPU)
    with pytest.raises(UserError, match="would overwrite the source"):
        stream_prune(pruner, untied, untied, lm_windows(), CPU)
    model = load_hf(untied)  # then given a run's weights (ckpt=): they are not the folder's
    model.weights_from_run = "RUN/checkpoints/round_0/best.ckpt"
    pruner.attach(model)
    with pytest.raises(UserError, match="without ckpt="):
        pruner.prune_streamed(model, CalibrationSet(lm_windows(), {}), CPU, set())


def test_stream_auto_streams_only_when_in_memory_pruning_would_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pruner.stream=auto`: with less memory free than in-memory pruning needs, the checkpoint is streamed (the
    in-memory masks and weights, bit for bit, and results.json's `oneshot.stream` says so); with enough, or where it
    cannot be streamed (a run's own weights, recovery steps), it is pruned in memory, and the reason is recorded."""
    import prunelab.pruning.oneshot as oneshot

    source = saved_llama(tmp_path / "llama")
    batches = lm_windows()
    want_pruner = OneShotPruner(sparsity=0.5, method="sparsegpt", device="cpu")
    want = in_memory(source, want_pruner, batches)

    def run(free: int, **setup: object) -> tuple[torch.nn.Module, OneShotPruner]:
        monkeypatch.setattr(oneshot, "free_bytes", lambda device: free)
        pruner = OneShotPruner(sparsity=0.5, method="sparsegpt", device="cpu", stream="auto")
        if "recovery" in setup:
            assert pruner.round_steps(1, int(setup["recovery"]), True) == setup["recovery"]  # no error under auto
        model = load_hf(source).eval()
        if "run_weights" in setup:
            model.weights_from_run = "RUN/checkpoints/round_0/best.ckpt"
        pruner.attach(model)
        pruner.use_data(object())
        pruner.calibration_data = lambda: CalibrationSet(batches, {"examples": 2, "tokens": 0})  # type: ignore[method-assign]
        pruner.prune(model)
        return model, pruner

    model, pruner = run(free=1)
    auto = pruner.details["stream"]["auto"]
    assert auto["streamed"] and auto["need_bytes"] > 1 and auto["not_streamable"] is None
    assert pruner.details["stream"]["parts"] == 5  # inputs, 3 layers, outputs: it was streamed
    for n, m in want_pruner.masks.items():
        assert torch.equal(pruner.masks[n], m), n
    for (n, p), q in zip(model.state_dict().items(), want.state_dict().values(), strict=True):
        assert torch.equal(p, q), n

    _, pruner = run(free=10**15)
    assert pruner.details["stream"] == {"auto": {**pruner.details["stream"]["auto"], "streamed": False}}
    assert "parts" not in pruner.details["stream"] and pruner.details["stream"]["auto"]["not_streamable"] is None

    _, pruner = run(free=1, run_weights=True)
    auto = pruner.details["stream"]["auto"]
    assert not auto["streamed"] and "without ckpt=" in auto["not_streamable"]
    _, pruner = run(free=1, recovery=5)
    assert not pruner.details["stream"]["auto"]["streamed"]
    assert "trainer.max_steps=5" in pruner.details["stream"]["auto"]["not_streamable"]
    for bad in ("yes", 1):  # 1 == True, but `pruner.stream=1` is not a setting: refused, not read as false
        with pytest.raises(UserError, match=rf"pruner\.stream={bad!r}: true, false or auto"):
            OneShotPruner(sparsity=0.5, stream=bad)


@pytest.mark.parametrize("case", ["llama", "llama_tied", "gemma2"])
def test_streamed_nll_equals_the_whole_models(case: str, tmp_path: Path) -> None:
    """`stream_nll` scores a checkpoint one part at a time (the tied embedding again for the head): the summed NLL of
    the scored targets equals the imported model's `token_nll`, to the bit, before pruning and for the folder
    `stream_prune` writes (against the in-memory pruned model)."""
    source = saved_llama(tmp_path / "ckpt", gemma=case == "gemma2", tie_word_embeddings=case == "llama_tied")
    batches = lm_windows()
    for b in batches:
        b["target"][~b["real"]] = IGNORE  # the padded window's tail is not scored

    def whole(model: torch.nn.Module) -> tuple[float, int]:
        with torch.no_grad():
            nll = sum(float(model.eval().token_nll(b).double().sum()) for b in batches)
        return nll, sum(int((b["target"] != IGNORE).sum()) for b in batches)

    got = stream_nll(source, batches, CPU)
    assert (got["nll"], got["tokens"]) == whole(load_hf(source))
    assert got["tokens"] == sum(int(b["real"].sum()) for b in batches)
    assert got["perplexity"] == pytest.approx(torch.tensor(got["nll"] / got["tokens"]).exp().item())

    pruner = OneShotPruner(sparsity=0.5, method="sparsegpt", device="cpu", stream=False)
    pruned = in_memory(source, pruner, batches)
    stream_prune(OneShotPruner(sparsity=0.5, method="sparsegpt"), source, tmp_path / "out", batches, CPU)
    after = stream_nll(tmp_path / "out", batches, CPU)
    assert (after["nll"], after["tokens"]) == whole(pruned)
    assert after["nll"] != got["nll"]  # pruning changed the model it scores
