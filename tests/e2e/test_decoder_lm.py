"""Decoder-only language models from the command line: a tiny GPT-2 and a tiny Llama (grouped-query attention,
untied head), each trained a little by Hugging Face itself and saved with `save_pretrained`, imported with
`model=hf_causal_lm model.path=...` on `data=lm_text` files read with the checkpoint's own tokenizer, and pruned by
every method. The pretrained model's perplexity is each run's first level, and it is checked against transformers'
own loss on the same windows (the test text as one token stream, non-overlapping windows of seq_len tokens)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests import hf_checkpoints as H
from tests.e2e.conftest import train_here

transformers = pytest.importorskip("transformers")

SEQ = 32
TINY = ["logger=none", "trainer.max_steps=6", "trainer.val_check_interval=3", f"data.seq_len={SEQ}"]


class Made(dict):
    """The text folder and each family's checkpoint, trained when a test first asks for it: a worker builds only
    the families its tests use (the tests of one family run on one worker: `by_family`)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.splits = {"train": H.documents(60, 1), "valid": H.documents(8, 2), "test": H.documents(10, 3)}

    def __missing__(self, key: str) -> Path:
        if key == "text":
            self[key] = H.write_lm_text(self.root / "text", self.splits)
        else:
            self[key] = H.causal_lm_checkpoint(self.root / key, self.splits["train"], key)
        return self[key]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return Made(tmp_path_factory.mktemp("lm"))


def by_family(family: str, *values: str) -> object:
    """A parameter set whose test goes to the worker of its family's other tests (one checkpoint trained once)."""
    return pytest.param(family, *values, marks=pytest.mark.xdist_group(f"decoder_lm_{family}"))


def hf_perplexity(folder: Path, docs: list[str]) -> float:
    """transformers' perplexity of the documents: each encoded and followed by EOS, concatenated, cut into windows
    of SEQ tokens (the partial last one dropped), the model's own loss (labels = the window) averaged."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = [t for d in docs for t in [*tok(d, add_special_tokens=False)["input_ids"], tok.eos_token_id]]
    windows = torch.tensor(ids[: len(ids) // SEQ * SEQ]).view(-1, SEQ)
    with torch.no_grad():
        losses = [float(model(w[None], labels=w[None]).loss) for w in windows]
    return math.exp(sum(losses) / len(losses))


def lm_run(made: dict[str, Path], family: str, out: Path, *overrides: str):
    preset = "model=hf_causal_lm" if family in ("gpt2", "llama") else "model=hf"  # model=hf: from config.json
    args = [preset, f"model.path={made[family]}", "data=lm_text", f"data.dir={made['text']}"]
    return train_here(out, *args, *TINY, *overrides)


METHODS = {
    "mp": ["pruner=mp", "sparsity=0.5"],
    "slt": ["pruner=slt", "sparsity=0.5", "pruner.levels=[0.3,0.5]"],
    "heads": ["pruner=heads", "sparsity=0.5", "pruner.finetune_steps=2"],
    "components": ["pruner=components", "sparsity=0.25", "pruner.finetune_steps=2"],
    "sparsegpt": ["pruner=oneshot", "sparsity=0.5", "trainer.max_steps=0", "pruner.calibration.n=16"],
    "wanda_2_4": ["pruner=oneshot", "pruner.method=wanda", "pruner.pattern=2:4", "sparsity=0.5", "trainer.max_steps=0"],
    "structured": ["pruner=structured", "sparsity=0.3", "pruner.budget=stack_params", "pruner.finetune_steps=2"],
}
LLAMA_ONLY = {  # what a decoder-only model adds: K/V groups, depth pruning by block influence
    "heads": ["pruner.unit=group"],
    "components": [
        "pruner.mode=remove",
        "pruner.criterion=block_influence",
        "pruner.granularity=layer",
        "sparsity=0.5",
    ],
}


# structured recovery by distillation from the Hugging Face folder the run started from: Phi-3 cut in width (heads and
# neurons), Gemma 2 in depth (one of its two layers, ranked by block influence)
DISTILLED = {
    "phi3": [],
    "gemma2": ["pruner.structure=depth", "pruner.criterion=block_influence", "sparsity=0.5"],
}


@pytest.mark.parametrize(
    ("family", "method"),
    [by_family("llama", m) for m in METHODS]
    + [by_family("gpt2", m) for m in ("mp", "slt", "heads", "components", "sparsegpt", "structured")]
    + [
        by_family(f, m) for f in ("opt", "pythia", "phi3", "gemma2") for m in ("mp", "heads", "sparsegpt", "structured")
    ],
)
def test_every_method_on_an_imported_language_model(
    made: dict[str, Path], tmp_path: Path, family: str, method: str
) -> None:
    extra = LLAMA_ONLY.get(method, []) if family == "llama" else []
    if method == "structured" and family in DISTILLED:  # recovery distils from the pretrained checkpoint itself
        extra = [*DISTILLED[family], f"task.distill.teacher={made[family]}"]
    run = lm_run(made, family, tmp_path / "run", *METHODS[method], *extra)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed" and res["score"] == {"key": "ppl", "name": "perplexity"}
    first = res["levels"][0]
    assert first["sparsity"] == 0.0 and first["stage"] in ("pretrained", "dense")
    want = hf_perplexity(made[family], H.documents(10, 3))
    assert first["metrics"]["test/ppl"] == pytest.approx(want, rel=1e-5)
    protocol = res["perplexity_protocol"]
    assert protocol["seq_len"] == SEQ and protocol["stride"] is None
    assert len(res["levels"]) >= 2
    last = res["levels"][-1]
    assert math.isfinite(last["metrics"]["test/ppl"])
    if method in ("mp", "slt", "sparsegpt", "wanda_2_4"):
        assert last["sparsity"] == pytest.approx(0.5, abs=0.01)
    if method in ("sparsegpt", "wanda_2_4"):
        assert last["time"]["steps"] == 0 and last["metrics"]["test/ppl"] > first["metrics"]["test/ppl"]
    if method == "heads":  # half the heads of GPT-2, OPT, Pythia; half the Llama's K/V groups, with their query heads
        heads = res["heads"]
        assert heads["unit"] == ("group" if family == "llama" else "head") and len(heads["removed"]) == 4
        if family == "llama":
            assert heads["groups_removed"] == 2 and sum(len(left) for left in heads["remaining"].values()) == 4
        assert last["params"]["before_pruning"] == first["params"]["total"]
    if method == "structured" and family in DISTILLED:
        assert res["distillation"]["teacher"] == str(made[family])
    if method == "structured" and family == "gemma2":  # one whole layer out, the other kept
        assert last["params"]["total"] < first["params"]["total"] and res["structured"]["structure"] == "depth"
    elif method == "structured":  # heads (K/V groups of the Llama) and neurons removed for real, 30% of the stacks
        cut = res["structured"]
        assert cut["stack_params_removed_fraction"] == pytest.approx(0.3, abs=0.02)
        assert cut["params"]["after"] == last["params"]["total"] < first["params"]["total"]
        assert cut["params"]["before"] - cut["params"]["after"] == pytest.approx(
            cut["stack_params_removed_fraction"] * cut["stack_params"]["before"], abs=1
        )
    if method == "components" and family == "llama":  # one of the two layers removed for real
        assert last["stage"] == "removed" and last["params"]["total"] < first["params"]["total"]


@pytest.mark.xdist_group("decoder_lm_llama")
def test_pruned_language_models_export_and_reload(made: dict[str, Path], tmp_path: Path) -> None:
    """`prunelab export RUN --format hf` of a mask-pruned Llama and of a depth-pruned one (a layer removed for real):
    transformers loads each folder and computes the run's logits; the depth-pruned run also reloads through load_run
    (checkpoints read with weights_only=True) and scores the perplexity it reported."""
    import subprocess
    import sys

    from prunelab.metrics import perplexity
    from prunelab.training import load_run
    from tests.e2e.conftest import ROOT, run_env

    runs = {
        "masked": lm_run(made, "llama", tmp_path / "masked", *METHODS["sparsegpt"]),
        "depth": lm_run(made, "llama", tmp_path / "depth", *METHODS["components"], *LLAMA_ONLY["components"]),
    }
    for name, run in runs.items():
        assert run.returncode == 0, run.stderr[-3000:]
        proc = subprocess.run(
            [sys.executable, "-m", "prunelab.cli.main", "export", str(run.dir), "--format", "hf"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=run_env(),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        ours = load_run(run.dir, data=True)
        hf = transformers.AutoModelForCausalLM.from_pretrained(run.dir / "hf").eval()
        assert hf.config.num_hidden_layers == (1 if name == "depth" else 2)
        nll, tokens = 0.0, 0
        with torch.no_grad():
            for batch in ours.datamodule.test_dataloader():
                torch.testing.assert_close(hf(batch["src"]).logits, ours.model(batch["src"]), atol=1e-5, rtol=1e-5)
                nll += float(ours.model.token_nll(batch).double().sum())
                tokens += int((batch["target"] != -100).sum())
        assert perplexity(nll, tokens) == pytest.approx(run.results["metrics"]["test/ppl"], rel=1e-5)
        if name == "masked":
            zeros = [
                float((w == 0).float().mean()) for k, w in hf.state_dict().items() if k.endswith("mlp.up_proj.weight")
            ]
            assert zeros and min(zeros) >= 0.5


@pytest.mark.parametrize("family", [by_family("llama"), by_family("gemma2")])
def test_head_and_component_studies_of_an_imported_language_model(
    made: dict[str, Path], tmp_path: Path, family: str
) -> None:
    """`prunelab heads RUN` and `prunelab components RUN` score a language model by its perplexity (negated, so
    that the studies' drops are the perplexity a head or component adds): their baseline is the run's. A Llama, and
    a Gemma 2 (sandwich norms, soft-capping, sliding windows), each with 2 layers of 4 query heads in 2 K/V groups."""
    import json
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT, run_env

    run = lm_run(made, family, tmp_path / "run", "pruner=none", "trainer.max_steps=0")
    assert run.returncode == 0, run.stderr[-3000:]
    val = run.results["metrics"]["val/ppl"]
    for study in ("components", "heads"):
        extra = ["--max-examples", "0", "--random-orders", "0"] if study == "heads" else ["--no-criticality"]
        proc = subprocess.run(
            [sys.executable, "-m", "prunelab.cli.main", study, str(run.dir), *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=run_env(),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads((run.dir / study / f"{study}.json").read_text())
        assert out["score"] == "-perplexity"
        if study == "components":  # on the validation split, every window
            assert out["baseline_bleu"] == pytest.approx(-val, rel=1e-5)
            assert set(out["contribution"]) == {f"dec.{i}.{k}" for i in range(2) for k in ("sa", "ff")}
            assert out["contribution_clip"] == pytest.approx(0.1 * val, rel=1e-5)
            for n, d in out["drop"].items():  # the drop is the perplexity the zeroed sub-layer adds
                assert d == pytest.approx(-out["bleu_zeroed"][n] - val, rel=1e-5)
            assert max(out["drop"].values()) > 0
        else:
            assert len(out["importance"]) == 8 and out["unit"] == "query head"  # 2 layers x 4 query heads
            assert sorted(out["group_importance"]) == [f"dec.{i}.sa.g{k}" for i in range(2) for k in range(2)]
