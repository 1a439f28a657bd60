"""Sequential calibration against the definition, on a tiny encoder-decoder and a tiny Llama-shaped decoder-only model
(rotary positions, grouped-query attention): every Linear's statistics are those of its inputs on real tokens,
recorded independently by running the model whose earlier layers hold their pruned weights and whose later layers
hold the original ones (the state in which that layer is calibrated); cross-attention keys and values see the pruned
encoder's memory. A calibration that ran every layer on the unpruned model's activations fails: the second layer's
inputs differ once the first is pruned. The decoder's real positions are those the loss counts (`tgt_out != pad`),
also when the decoder starts from the pad id, as Marian's does."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from prunelab.data.batching import collate
from prunelab.data.windows import IGNORE
from prunelab.models import build_transformer
from prunelab.models.causal_lm import CausalLM
from prunelab.pruning.calibration import Recorder, linears_under, prune_sequentially
from prunelab.pruning.masks import prunable_weights
from prunelab.pruning.memory import free_bytes
from prunelab.pruning.solvers import InputStats, Pattern, removal_mask, wanda_scores
from tests.tiny import tiny_llama as llama_shaped

PAD, BOS, EOS = 0, 1, 2


# the encoder-decoders of the imported families: each stack's inputs come through Transformer.encoder_inputs /
# decoder_inputs, which a calibration that embedded the tokens itself would miss (T5's relative position bias, BART's
# per-stack tables, M2M100's per-sentence positions)
FLAVOURS = {
    "vaswani": {},
    "t5": dict(
        positions="relative", rel_buckets=8, rel_max_distance=12, attn_scale=1.0, norm="rms", ffn="glu",
        qkv_bias=False, out_bias=False, ff_bias=False, embed_scale=False, tie_embeddings=False, logit_scale=0.25,
    ),
    "bart": dict(positions="learned", position_shift=2, stack_embeddings=True, embed_norm=True, pre_norm=False),
    "m2m100": dict(positions="sinusoidal", pos_layout="fairseq", position_offset=PAD + 1),
}  # fmt: skip


def tiny(flavour: str = "vaswani") -> nn.Module:
    torch.manual_seed(0)
    model = build_transformer(
        vocab_size=40, d_model=16, n_heads=2, d_ff=32, enc_layers=2, dec_layers=2, dropout=0.0, max_len=64,
        **FLAVOURS[flavour],
    )  # fmt: skip
    if flavour in ("t5", "bart"):  # tables away from their init, so that a missing bias or position moves the inputs
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "rel_bias" in n or "pos_embed" in n:
                    p.normal_(0.0, 1.0)
    return model.eval()


def batches(bos: int = BOS) -> list[dict[str, torch.Tensor]]:
    """Two batches as the data collates them, with padded sources and targets (left out of every statistic);
    `bos=PAD`: the decoder starts from the pad id, as Marian's does (its first position is real all the same)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for src_lens, tgt_lens in (((7, 5, 6), (4, 4, 1)), ((9, 9), (8, 5))):
        examples = []
        for k, (s, t) in enumerate(zip(src_lens, tgt_lens, strict=True)):
            src = [*torch.randint(4, 40, (s - 1,), generator=g).tolist(), EOS]
            examples.append((src, torch.randint(4, 40, (t,), generator=g).tolist(), "", k))
        b = collate(examples, pad_id=PAD, bos_id=bos, eos_id=EOS)
        out.append({k: b[k] for k in ("src", "tgt_in", "tgt_out")})
    return out


def layer_of(name: str) -> tuple[str, int]:
    side, i = name.split(".")[:2]
    return side, int(i)


def calibrated_before(a: str, b: str) -> bool:
    """Layer of `a` is pruned before the layer of `b` is calibrated (encoder layers first, then decoder layers);
    tensors outside the stacks (embeddings, final norms) are never pruned here."""
    if not a.startswith(("enc.", "dec.")):
        return False
    (sa, ia), (sb, ib) = layer_of(a), layer_of(b)
    rank = {"enc": 0, "dec": 1}
    return (rank[sa], ia) < (rank[sb], ib)


Solver = Callable[[str, nn.Linear, InputStats], None]


def wanda_half() -> tuple[dict[str, InputStats], dict[str, torch.Tensor], Solver]:
    """A solver for prune_sequentially that keeps each Linear's statistics and prunes it by Wanda at 50% per row:
    (statistics by Linear, removed entries by weight, the solver)."""
    seen: dict[str, InputStats] = {}
    removed: dict[str, torch.Tensor] = {}

    def solve(n: str, linear: nn.Linear, stats: InputStats) -> None:
        seen[n] = stats
        removed[f"{n}.weight"] = removal_mask(wanda_scores(linear.weight, stats.col_sq_norms), 0.5, Pattern(), True)
        linear.weight.data[removed[f"{n}.weight"]] = 0.0

    return seen, removed, solve


@pytest.mark.parametrize(
    ("bos", "flavour"),
    [(BOS, "vaswani"), (PAD, "vaswani"), (BOS, "t5"), (BOS, "bart"), (BOS, "m2m100")],
    ids=["bos", "marian_pad_start", "t5", "bart", "m2m100"],
)
@pytest.mark.parametrize(
    "name", ["enc.0.ff.fc1", "enc.1.sa.q_proj", "dec.0.ea.k_proj", "dec.0.sa.v_proj", "dec.1.ff.fc2"]
)
def test_each_layer_is_calibrated_on_the_pruned_layers_before_it(name: str, bos: int, flavour: str) -> None:
    original = tiny(flavour)
    model = copy.deepcopy(original)
    names = set(prunable_weights(model))
    seen, removed, solve = wanda_half()

    data = batches(bos)
    order = prune_sequentially(model, data, names, solve, full=True)
    assert set(removed) == names and all(float(r.float().mean()) == 0.5 for r in removed.values())
    layers = [".".join(n.split(".")[:2]) for n in order]  # encoder layers in order, then decoder layers
    assert list(dict.fromkeys(layers)) == ["enc.0", "enc.1", "dec.0", "dec.1"]

    # independently: the model as it was when `name` was calibrated, its inputs recorded on real tokens (the
    # decoder's: the positions whose target the loss counts)
    state = {k: (model if calibrated_before(k, name) else original).state_dict()[k] for k in original.state_dict()}
    hybrid = tiny(flavour)
    hybrid.load_state_dict(state)
    unpruned = tiny(flavour)
    recorded, recorded_unpruned = [], []
    for net, rows in ((hybrid, recorded), (unpruned, recorded_unpruned)):
        target = net.get_submodule(name)
        current = {}
        target.register_forward_hook(lambda m, i, o, rows=rows, current=current: rows.append(i[0][current["real"]]))
        for b in data:
            on_source = name.startswith("enc.") or name.endswith(("ea.k_proj", "ea.v_proj"))
            current["real"] = (b["src"] if on_source else b["tgt_out"]) != PAD
            with torch.no_grad():
                net(b["src"], b["tgt_in"])
    x = torch.cat(recorded).double()  # (real tokens, in)
    stats = seen[name]
    assert stats.tokens == x.shape[0]
    n = sum(b["src"].shape[0] for b in data)  # H = 2/n Σ x xᵀ over n sequences, the reference's scale
    assert stats.sequences == n
    torch.testing.assert_close(stats.h.double(), 2 / n * x.T @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.col_sq_norms.double(), 2 / n * (x * x).sum(0), rtol=1e-5, atol=1e-5)
    if not name.startswith(("enc.0.", "dec.0.sa.")):  # inputs downstream of pruned layers: pruning changed them
        x0 = torch.cat(recorded_unpruned).double()
        assert not torch.allclose(x0.T @ x0, x.T @ x, rtol=1e-3, atol=1e-3)
    # Wanda's removed weights are the lowest |W|·‖X_j‖₂ of each row, from these recorded inputs
    w = original.get_submodule(name).weight.double()
    want = removal_mask(w.abs() * x.norm(dim=0)[None, :], 0.5, Pattern(), per_row=True)
    assert torch.equal(removed[f"{name}.weight"], want)


# the decoder-only layouts a layer-by-layer calibration must run as the model does: Gemma 3's (norms inside the
# sub-layers' outputs, q/k norms, soft-capped attention, sliding windows of 4 in layers 0 and 2 rotating with their
# own base) and Phi's (one norm read by the parallel attention and MLP, half of each head rotated)
LAYOUTS = {
    "llama": {},
    "gemma3": dict(norm="gemma_rms", activation="gelu_tanh", embed_scale=True, sandwich_norm=True, qk_norm=True,
                   attn_softcap=3.0, sliding_window=4, window_layers=(0, 2), local_rope_theta=50.0),
    "phi": dict(norm="layer", ffn="mlp", activation="gelu_tanh", parallel_residual=True, shared_norm=True,
                rotary_dims=4, qkv_bias=True, out_bias=True, ff_bias=True),
}  # fmt: skip


def tiny_llama(layout: str = "llama") -> CausalLM:
    """Llama-shaped: rotary positions, grouped-query attention (4 query heads over 2 key/value heads), RMSNorm,
    SwiGLU, no biases; or with another LAYOUTS' layers."""
    sizes = dict(vocab_size=40, d_model=32, n_heads=4, n_kv_heads=2, d_ff=48, dec_layers=3)
    model = llama_shaped(seed=0, **sizes, **LAYOUTS[layout])
    if layout != "llama":  # norm weights away from their init, so that a norm left out moves the inputs
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "norm" in n:
                    p.add_(torch.randn_like(p) * 0.3)
    return model


def lm_batches() -> list[dict[str, torch.Tensor]]:
    """Language-model windows as the data collates them: a shorter window padded (its `real` mask False there)."""
    g = torch.Generator().manual_seed(2)
    out = []
    for b, t in ((3, 12), (2, 16)):
        w = torch.randint(0, 40, (b, t + 1), generator=g)
        real = torch.ones(b, t, dtype=torch.bool)
        real[-1, t - 5 :] = False
        src, target = w[:, :-1].clone(), w[:, 1:].clone()
        src[~real], target[~real] = PAD, IGNORE
        out.append({"src": src, "target": target, "real": real})
    return out


@pytest.mark.parametrize(
    ("name", "layout"),
    [(n, "llama") for n in ("dec.0.sa.q_proj", "dec.0.sa.out_proj", "dec.1.sa.k_proj", "dec.1.ff.fc3", "dec.2.ff.fc2")]
    + [(n, layout) for layout in ("gemma3", "phi") for n in ("dec.1.sa.k_proj", "dec.2.sa.q_proj", "dec.2.ff.fc2")],
)
def test_each_decoder_only_layer_is_calibrated_on_the_pruned_layers_before_it(name: str, layout: str) -> None:
    """The decoder-only path (a Llama-shaped model, rotary positions, GQA): every Linear's statistics are those of
    its inputs on real tokens, recorded from the model's own forward pass (rotary positions in every attention) with
    the layers before it pruned and the rest original. Layers run without their rotary positions give another
    attention output, so every statistic from dec.0's output projection on would differ."""
    original = tiny_llama(layout)
    model = copy.deepcopy(original)
    names = set(prunable_weights(model))
    seen, removed, solve = wanda_half()

    data = lm_batches()
    order = prune_sequentially(model, data, names, solve, full=True)
    assert set(removed) == names and len(names) == 3 * (6 if layout == "phi" else 7)  # q k v out, fc1 (fc3) fc2
    assert list(dict.fromkeys(".".join(n.split(".")[:2]) for n in order)) == ["dec.0", "dec.1", "dec.2"]

    state = {k: (model if calibrated_before(k, name) else original).state_dict()[k] for k in original.state_dict()}
    hybrid = tiny_llama(layout)
    hybrid.load_state_dict(state)
    recorded, recorded_unpruned = [], []
    for net, rows in ((hybrid, recorded), (tiny_llama(layout), recorded_unpruned)):
        current = {}
        net.get_submodule(name).register_forward_hook(
            lambda m, i, o, rows=rows, current=current: rows.append(i[0][current["real"]])
        )
        for b in data:
            current["real"] = b["real"]
            with torch.no_grad():
                net(b["src"])  # CausalLM.forward: rotary positions in every layer
    x = torch.cat(recorded).double()  # (real tokens, in)
    stats = seen[name]
    assert stats.tokens == x.shape[0] == sum(int(b["real"].sum()) for b in data)
    n = sum(b["src"].shape[0] for b in data)  # H = 2/n Σ x xᵀ over n sequences, the reference's scale
    assert stats.sequences == n
    torch.testing.assert_close(stats.h.double(), 2 / n * x.T @ x, rtol=1e-5, atol=1e-5)
    if not name.startswith(("dec.0.sa.",)):  # downstream of a pruned Linear
        x0 = torch.cat(recorded_unpruned).double()
        assert not torch.allclose(x0.T @ x0, x.T @ x, rtol=1e-3, atol=1e-3)
    w = original.get_submodule(name).weight.double()
    want = removal_mask(w.abs() * x.norm(dim=0)[None, :], 0.5, Pattern(), per_row=True)
    assert torch.equal(removed[f"{name}.weight"], want)


@pytest.mark.parametrize("layout", ["llama", "phi"])
def test_linears_reading_one_input_share_its_accumulation_and_get_their_own_copies(layout: str) -> None:
    """q/k/v (and gate/up; under Phi's shared norm also fc1) read one tensor: accumulated once, each Linear handed
    its own copy at the end, equal to what hooks accumulating every Linear separately give; no other Linear shares."""
    model = tiny_llama(layout)
    layer = model.dec[1]
    group = linears_under(layer, "dec.1", set(prunable_weights(model)))
    separate: dict[str, torch.Tensor] = {n: torch.zeros(m.in_features, m.in_features) for n, m in group.items()}

    def accumulate(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].flatten(0, 1)
            separate[name].add_(x.T @ x)

        return hook

    hooks = [m.register_forward_hook(accumulate(n)) for n, m in group.items()]
    rec = Recorder(group, full=True)
    for b in lm_batches():
        rec.start(dict.fromkeys(group))
        with torch.no_grad():
            model(b["src"])
    for h in hooks:
        h.remove()
    stats = rec.finish()
    groups: dict[str, set[str]] = {}
    for n in group:
        groups.setdefault(rec.same_as.get(n, n), set()).add(n)
    qkv = {f"dec.1.sa.{p}_proj" for p in "qkv"}
    want = (
        [qkv | {"dec.1.ff.fc1"}, {"dec.1.sa.out_proj"}, {"dec.1.ff.fc2"}]
        if layout == "phi"
        else [qkv, {"dec.1.ff.fc1", "dec.1.ff.fc3"}, {"dec.1.sa.out_proj"}, {"dec.1.ff.fc2"}]
    )
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, want))
    sequences = sum(b["src"].shape[0] for b in lm_batches())
    for n in group:
        torch.testing.assert_close(stats[n].h, 2 / sequences * separate[n], rtol=1e-5, atol=1e-4)
        assert stats[n].tokens == sum(b["src"].numel() for b in lm_batches())
    stats["dec.1.sa.q_proj"].h.zero_()  # a solver overwriting one H (SparseGPT's) leaves the others alone
    assert stats["dec.1.sa.k_proj"].h.abs().sum() > 0


def test_decoder_statistics_count_the_tokens_the_loss_counts() -> None:
    """A decoder that starts from the pad id (Marian): every decoder Linear is calibrated on exactly the positions
    whose target the loss counts, the first included (cross-attention keys and values on the real source tokens)."""
    model = tiny()
    data = batches(bos=PAD)
    loss_tokens = sum(int((b["tgt_out"] != PAD).sum()) for b in data)  # what example_losses averages over
    source_tokens = sum(int((b["src"] != PAD).sum()) for b in data)
    assert loss_tokens > sum(int((b["tgt_in"] != PAD).sum()) for b in data)  # the pad-id start is a real position
    counts: dict[str, int] = {}

    def solve(n: str, linear: nn.Linear, stats: InputStats) -> None:
        counts[n] = stats.tokens

    prune_sequentially(model, data, set(prunable_weights(model)), solve, full=False)
    decoder = {n: c for n, c in counts.items() if n.startswith("dec.")}
    assert len(decoder) == 2 * 10  # sa: q k v out, ea: q k v out, ff: fc1 fc2
    for n, c in decoder.items():
        assert c == (source_tokens if n.endswith(("ea.k_proj", "ea.v_proj")) else loss_tokens), n


def test_peak_memory_sees_allocations_that_reuse_freed_memory() -> None:
    """Memory freed before the block (a dense evaluation's) and reused inside it still counts as the block's: 100 MB
    of small tensors allocated inside must show, even right after 100 MB of the same were freed."""
    from prunelab.pruning.memory import peak_memory, rss_bytes

    if rss_bytes() == 0:
        pytest.skip("no /proc here: resident memory cannot be read")
    small = 25_000  # floats: 100 kB, below glibc's mmap threshold, so they live in the heap
    freed = [torch.ones(small) for _ in range(1000)]
    pin = torch.ones(small)  # above them in the heap: glibc cannot hand them back on its own when they are freed
    del freed
    with peak_memory(torch.device("cpu")) as mem:
        kept = [torch.ones(small) for _ in range(1000)]
        time.sleep(0.05)  # at least one 5 ms sample while they are held
    assert mem["extra_bytes"] >= 0.8 * 1000 * small * 4
    del kept, pin


def test_free_memory_is_the_least_of_memavailable_and_the_cgroup_cap(tmp_path: Path) -> None:
    """`pruner.stream=auto` reads what is free: MemAvailable, or less where a control group caps the process (v2
    memory.max - memory.current, v1 limit - usage); "max" and v1's 2^63 mean no cap; None where nothing is readable."""

    def tree(name: str, meminfo_kb: int | None, files: dict[str, str]) -> Path:
        root = tmp_path / name
        (root / "proc").mkdir(parents=True)
        if meminfo_kb is not None:
            (root / "proc/meminfo").write_text(f"MemTotal:  99999999 kB\nMemAvailable:  {meminfo_kb} kB\n")
        for rel, text in files.items():
            (root / "sys/fs/cgroup" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "sys/fs/cgroup" / rel).write_text(text)
        return root

    cpu = torch.device("cpu")
    assert free_bytes(cpu, tree("plain", 8 * 2**20, {})) == 8 * 2**30
    v2 = {"memory.max": str(4 * 2**30), "memory.current": str(3 * 2**30)}
    assert free_bytes(cpu, tree("v2", 8 * 2**20, v2)) == 2**30
    assert free_bytes(cpu, tree("v2_uncapped", 8 * 2**20, {"memory.max": "max\n", "memory.current": "5"})) == 8 * 2**30
    v1 = {"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "123"}
    assert free_bytes(cpu, tree("v1_uncapped", 8 * 2**20, v1)) == 8 * 2**30
    v1 = {"memory/memory.limit_in_bytes": str(2 * 2**30), "memory/memory.usage_in_bytes": str(3 * 2**30)}
    assert free_bytes(cpu, tree("v1_over", 8 * 2**20, v1)) == 0
    assert free_bytes(cpu, tree("none", None, {})) is None
