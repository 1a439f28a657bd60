"""Pretrained checkpoints from the command line, as a researcher runs them: a tiny BERT classifier and a tiny MarianMT
model, each made and trained a little by Hugging Face itself (tests/hf_checkpoints.py), imported with
`model=hf_encoder|hf_marian model.path=...` on data files read with the checkpoint's own tokenizer.

The pretrained model's own score is every run's dense level, and it is checked against Hugging Face: the accuracy of
HF's model on HF's tokenization, and the BLEU of HF's greedy `generate` (identical hypotheses, line for line)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch

from tests import hf_checkpoints as H
from tests.e2e.conftest import ROOT, check_scores_from_files, read_hypotheses, run_env, train, train_here

transformers = pytest.importorskip("transformers")

TINY = ["logger=none", "trainer.max_steps=16", "trainer.val_check_interval=8"]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    cls = {"train": H.sentiment(160, 1), "dev": H.sentiment(32, 2), "test": H.sentiment(48, 3)}
    nmt = {"train": H.copy_pairs(160, 1), "valid": H.copy_pairs(16, 2), "test": H.copy_pairs(24, 3)}
    return {
        # id2label in the reverse of sorted order: the data's labels must follow the checkpoint's head
        "bert": H.encoder_checkpoint(root / "bert", *cls["train"], "bert", names=["positive", "negative"]),
        "marian": H.marian_checkpoint(root / "marian", *nmt["train"]),
        "tsv": H.write_tsv(root / "tsv", cls),
        "parallel": H.write_parallel(root / "parallel", nmt),
    }


def hf_accuracy(folder: Path, texts: list[str], labels: list[str]) -> float:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        pred = model(**tok(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    return sum(model.config.id2label[p] == y for p, y in zip(pred, labels, strict=True)) / len(labels)


def hf_greedy(folder: Path, sources: list[str]) -> list[str]:
    """transformers' translations with the checkpoint's own generation settings (greedy, at most 20 tokens here),
    which an imported model decodes with by default (tests/e2e/test_marian_decoding.py: other settings)."""
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.MarianMTModel.from_pretrained(folder).eval()
    assert model.generation_config.num_beams in (None, 1)
    with torch.no_grad():
        out = model.generate(**tok(sources, padding=True, return_tensors="pt"))
    return tok.batch_decode(out, skip_special_tokens=True)


# whole layers by Wang & Tu's contribution (block influence reads a pre-norm residual stream; these are post-norm)
DEPTH = ["pruner=structured", "pruner.structure=depth", "pruner.criterion=contribution", "pruner.budget=stack_params"]


def check_structured(res: dict) -> None:
    """What pruner=structured reports is what the tested model has: fewer parameters, by the stack fraction."""
    cut, last = res["structured"], res["levels"][-1]
    assert cut["params"]["after"] == last["params"]["total"] < res["levels"][0]["params"]["total"]
    removed = cut["params"]["before"] - cut["params"]["after"]
    assert removed == pytest.approx(cut["stack_params_removed_fraction"] * cut["stack_params"]["before"], abs=1)
    gone = set(cut["layers_removed"])  # depth removes whole layers only; width keeps every component, narrower
    assert {n.rsplit(".", 1)[0] for n in cut["widths"]}.isdisjoint(gone) and bool(gone) == (cut["structure"] == "depth")


def encoder_run(made: dict[str, Path], out: Path, *overrides: str):
    """A run of the tiny BERT, in this process (train_here: the command line itself is tested elsewhere)."""
    args = ["model=hf_encoder", f"model.path={made['bert']}", "data=tsv_classification", f"data.dir={made['tsv']}"]
    return train_here(out, *args, *TINY, *overrides)


def marian_run(made: dict[str, Path], out: Path, *overrides: str):
    args = ["model=hf_marian", f"model.path={made['marian']}", "data=parallel_text", f"data.dir={made['parallel']}"]
    return train_here(out, *args, *TINY, "task.beam_size=1", *overrides)


@pytest.mark.parametrize(
    "pruner",
    [
        ["pruner=mp", "sparsity=0.5"],
        ["pruner=slt", "sparsity=0.5", "pruner.levels=[0.3,0.5]"],
        ["pruner=heads", "sparsity=0.25", "pruner.finetune_steps=4"],
        ["pruner=components", "sparsity=0.25", "pruner.finetune_steps=4"],
        ["pruner=attendout"],
        ["pruner=oneshot", "sparsity=0.5", "trainer.max_steps=0", "pruner.calibration.n=16"],
        [*DEPTH, "sparsity=0.5", "pruner.finetune_steps=2"],
    ],
    ids=lambda p: p[0],
)
def test_every_method_on_an_imported_bert(made: dict[str, Path], tmp_path: Path, pruner: list[str]) -> None:
    run = encoder_run(made, tmp_path / "run", *pruner)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    assert res["status"] == "completed" and res["labels"] == ["positive", "negative"]
    dense = res["levels"][0]
    # a separate "pretrained" level when round 0 trains; heads and components score the start weights as round 0
    assert dense["sparsity"] == 0.0 and dense["stage"] in ("pretrained", "dense")
    assert (dense["round"] == -1) == (dense["stage"] == "pretrained")
    texts, labels = H.sentiment(48, 3)
    assert dense["metrics"]["test/acc"] == pytest.approx(hf_accuracy(made["bert"], texts, labels), abs=1e-9)
    assert len(res["levels"]) >= 2 and res["levels"][-1]["round"] > dense["round"]
    check_scores_from_files(run)
    if pruner[0] in ("pruner=mp", "pruner=slt", "pruner=oneshot"):
        assert res["levels"][-1]["sparsity"] == pytest.approx(0.5, abs=0.01)
    if pruner[0] == "pruner=oneshot":  # SparseGPT from 16 training examples, scored without training
        assert res["oneshot"]["calibration"]["examples"] == 16 and res["oneshot"]["method"] == "sparsegpt"
        assert res["levels"][-1]["time"]["steps"] == 0
    if pruner[0] == "pruner=structured":  # the tiny BERT's 2 layers: 1 goes
        check_structured(res)
        assert len(res["structured"]["layers_removed"]) == 1
    if pruner[0] == "pruner=slt":  # θ_0, which lottery tickets rewind to, is the pretrained model itself
        from safetensors.torch import load_file

        init = torch.load(res["init_weights"], weights_only=True)
        hf = load_file(str(made["bert"] / "model.safetensors"))
        assert torch.equal(init["enc.1.ff.fc2.weight"], hf["bert.encoder.layer.1.output.dense.weight"])
        assert torch.equal(init["embed.weight"], hf["bert.embeddings.word_embeddings.weight"])


@pytest.mark.parametrize(
    "pruner",
    [
        ["pruner=mp", "sparsity=0.5"],
        ["pruner=slt", "sparsity=0.5", "pruner.levels=[0.3,0.5]"],
        ["pruner=heads", "sparsity=0.25", "pruner.finetune_steps=4"],
        ["pruner=components", "sparsity=0.25", "pruner.finetune_steps=4"],
        ["pruner=oneshot", "pruner.method=wanda", "pruner.pattern=2:4", "sparsity=0.5", "trainer.max_steps=0"],
        ["pruner=structured", "sparsity=0.3", "pruner.budget=stack_params", "pruner.finetune_steps=2"],
        [*DEPTH, "sparsity=0.25", "pruner.finetune_steps=2"],
    ],
    ids=lambda p: " ".join(p[:2]),
)
def test_every_method_on_an_imported_marian(made: dict[str, Path], tmp_path: Path, pruner: list[str]) -> None:
    run = marian_run(made, tmp_path / "run", *pruner)
    assert run.returncode == 0, run.stderr[-3000:]
    res = run.results
    dense = res["levels"][0]
    assert res["status"] == "completed" and dense["sparsity"] == 0.0
    sources, refs = H.copy_pairs(24, 3)
    want = hf_greedy(made["marian"], sources)
    d = run.dir / "checkpoints" / ("pretrained" if dense["round"] == -1 else "round_0")
    assert read_hypotheses(d) == want  # the pretrained level decodes exactly as HF's generate
    bleu = sacrebleu.corpus_bleu(want, [refs]).score
    assert dense["metrics"]["test/bleu"] == pytest.approx(bleu, rel=1e-6)  # logged metrics are float32
    assert len(res["levels"]) >= 2
    check_scores_from_files(run)
    if pruner[0] == "pruner=structured":
        check_structured(res)
    if pruner[0] == "pruner=oneshot":  # Wanda 2:4: every matrix keeps 2 of every 4 consecutive inputs
        from prunelab.training import load_run
        from prunelab.training.io import checkpoint_masks

        masks = checkpoint_masks(torch.load(res["best_checkpoint"], weights_only=True)["state_dict"])
        assert masks and all(bool((m.view(m.shape[0], -1, 4).sum(-1) == 2).all()) for m in masks.values())
        model = load_run(run.dir).model
        assert all(float((model.get_parameter(k) == 0).float().mean()) >= 0.5 for k in masks)


def prunelab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prunelab.cli.main", *args], cwd=ROOT, capture_output=True, text=True, env=run_env()
    )


def test_mask_pruned_bert_and_marian_export_to_hugging_face(made: dict[str, Path], tmp_path: Path) -> None:
    """`prunelab export RUN --format hf`: transformers loads the folder and computes the pruned run's logits."""
    from prunelab.training import load_run

    for name, run in (
        ("bert", encoder_run(made, tmp_path / "bert", "pruner=mp", "sparsity=0.5")),
        ("marian", marian_run(made, tmp_path / "marian", "pruner=mp", "sparsity=0.5")),
    ):
        assert run.returncode == 0, run.stderr[-3000:]
        proc = prunelab_cli("export", str(run.dir), "--format", "hf")
        assert proc.returncode == 0, proc.stderr[-3000:]
        folder = run.dir / "hf"
        ours = load_run(run.dir, data=True)
        batch = next(iter(ours.datamodule.test_dataloader()))
        auto = transformers.AutoModelForSequenceClassification if name == "bert" else transformers.MarianMTModel
        hf = auto.from_pretrained(folder).eval()
        with torch.no_grad():
            if name == "bert":
                got = hf(input_ids=batch["src"], token_type_ids=batch["types"], attention_mask=batch["src"] != 0).logits
                want = ours.model(batch["src"], types=batch["types"])
                assert hf.config.id2label == {0: "positive", 1: "negative"}
            else:
                pad = hf.config.pad_token_id
                got = hf(
                    input_ids=batch["src"], attention_mask=batch["src"] != pad, decoder_input_ids=batch["tgt_in"]
                ).logits
                want = ours.model(batch["src"], batch["tgt_in"])
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        zeros = [
            (w == 0).float().mean().item()
            for k, w in hf.state_dict().items()
            if k.endswith("fc1.weight") or k.endswith("intermediate.dense.weight")
        ]
        assert zeros and min(zeros) == pytest.approx(0.5, abs=0.01)  # the masks are in the file
        assert (folder / "tokenizer_config.json").is_file()  # self-contained: its tokenizer came along


def reloaded_accuracy(run) -> float:
    """The test accuracy of a reloaded run's model (load_run with data), computed here batch by batch."""
    correct = total = 0
    with torch.no_grad():
        for batch in run.datamodule.test_dataloader():
            correct += int((run.model(batch["src"], types=batch["types"]).argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    return correct / total


def test_head_pruned_run_reloads_in_prunelab(made: dict[str, Path], tmp_path: Path) -> None:
    """Heads removed from an imported BERT (which transformers v5 cannot represent) reload through load_run, from
    checkpoints read with weights_only=True, and score what the run reported."""
    from prunelab.training import load_run

    run = encoder_run(made, tmp_path / "run", "pruner=heads", "sparsity=0.5", "pruner.finetune_steps=0")
    assert run.returncode == 0, run.stderr[-3000:]
    ours = load_run(run.dir, data=True)
    heads = [layer.sa.n_heads for layer in ours.model.enc]
    assert sum(heads) == 4  # 8 heads, half removed
    proc = prunelab_cli("export", str(run.dir), "--format", "hf")  # a removed head comes back as zeros
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert reloaded_accuracy(ours) == pytest.approx(run.results["metrics"]["test/acc"], abs=1e-9)


def test_datasets_readers_from_the_command_line(made: dict[str, Path], tmp_path: Path) -> None:
    """`data=hf_classification` and `data=hf_translation` on data sets saved with `datasets`, with the imported
    checkpoints: the pretrained level scores what Hugging Face's model scores on the same test split."""
    datasets = pytest.importorskip("datasets")
    cls = {"train": H.sentiment(160, 1), "validation": H.sentiment(32, 2), "test": H.sentiment(48, 3)}
    datasets.DatasetDict(
        {k: datasets.Dataset.from_dict({"sentence": t, "label": y}) for k, (t, y) in cls.items()}
    ).save_to_disk(str(tmp_path / "sst"))
    nmt = {"train": H.copy_pairs(160, 1), "validation": H.copy_pairs(16, 2), "test": H.copy_pairs(24, 3)}
    datasets.DatasetDict(
        {
            k: datasets.Dataset.from_dict({"translation": [{"en": a, "de": b} for a, b in zip(s, t, strict=True)]})
            for k, (s, t) in nmt.items()
        }
    ).save_to_disk(str(tmp_path / "wmt"))

    run = train(
        tmp_path / "cls",
        "model=hf_encoder",
        f"model.path={made['bert']}",
        "data=hf_classification",
        f"data.name={tmp_path / 'sst'}",
        *TINY,
        "pruner=mp",
        "sparsity=0.3",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    acc = hf_accuracy(made["bert"], *cls["test"])
    assert run.results["levels"][0]["metrics"]["test/acc"] == pytest.approx(acc, abs=1e-9)

    run = train(
        tmp_path / "nmt",
        "model=hf_marian",
        f"model.path={made['marian']}",
        "data=hf_translation",
        f"data.name={tmp_path / 'wmt'}",
        *TINY,
        "task.beam_size=1",
        "pruner=mp",
        "sparsity=0.3",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    want = hf_greedy(made["marian"], nmt["test"][0])
    assert read_hypotheses(run.dir / "checkpoints" / "pretrained") == want
    check_scores_from_files(run)


def test_a_hub_id_is_read_from_the_hugging_face_cache(made: dict[str, Path], tmp_path: Path) -> None:
    """`model.path=org/name`: resolved through the hub cache (offline here: HF_HUB_OFFLINE=1, a cache laid out as
    huggingface_hub writes it), for the weights and the tokenizer alike; an id that is not cached is one error line."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny--bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(made["bert"], repo / "snapshots" / commit)
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    common = ["data=tsv_classification", f"data.dir={made['tsv']}", *TINY, "trainer.max_steps=2"]
    run = train(tmp_path / "run", "model=hf_encoder", "model.path=tiny/bert", *common, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.results["levels"][0]["metrics"]["test/acc"] == pytest.approx(
        hf_accuracy(made["bert"], *H.sentiment(48, 3)), abs=1e-9
    )
    missing = train(tmp_path / "missing", "model=hf_encoder", "model.path=tiny/absent", *common, env=env)
    assert missing.returncode != 0
    lines = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "tiny/absent: not a local folder" in lines[0] and "hf download" in lines[0]


def test_head_and_component_analyses_of_an_imported_bert(made: dict[str, Path], tmp_path: Path) -> None:
    """`prunelab heads` and `prunelab components` on a run of the imported BERT: Michel's BERT setting (accuracy as
    heads are removed) and Wang & Tu's contributions, scored in accuracy on the run's own data and checkpoint."""
    import json

    run = encoder_run(made, tmp_path / "run", "trainer.max_steps=2")
    assert run.returncode == 0, run.stderr[-3000:]
    for command in ("heads", "components"):
        proc = prunelab_cli(command, str(run.dir))
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = run.results["metrics"]
    heads = json.loads((run.dir / "heads" / "heads.json").read_text())
    assert heads["score"] == "accuracy (%)"
    assert sorted(heads["importance"]) == [f"enc.{i}.sa.h{j}" for i in range(2) for j in range(4)]
    assert heads["baseline_bleu"] == pytest.approx(100 * metrics["test/acc"], abs=1e-6)  # the run's tested checkpoint
    components = json.loads((run.dir / "components" / "components.json").read_text())
    assert sorted(components["bleu_zeroed"]) == ["enc.0.ff", "enc.0.sa", "enc.1.ff", "enc.1.sa"]
    assert components["baseline_bleu"] == pytest.approx(100 * metrics["val/acc"], abs=1e-6)  # scored on valid


def test_a_run_stands_alone_without_its_source_folder(made: dict[str, Path], tmp_path: Path) -> None:
    """A run of an imported checkpoint keeps what rebuilds its model (config.json, the tokenizer and generation
    files: `<run>/hf_source`, no weights): with the source folder deleted it reloads (load_run, scoring what the run
    reported), exports to Hugging Face (transformers computes its logits) and is analysed (`prunelab heads`); with
    the data deleted too, an analysis that needs them says so in one line."""
    from prunelab.training import load_run

    sources = {name: tmp_path / "source" / name for name in ("bert", "marian", "tsv")}
    for name, folder in sources.items():
        shutil.copytree(made[name], folder)
    bert = train(
        tmp_path / "bert",
        "model=hf_encoder",
        f"model.path={sources['bert']}",
        "data=tsv_classification",
        f"data.dir={sources['tsv']}",
        *TINY,
        "trainer.max_steps=4",
        "pruner=mp",
        "sparsity=0.5",
    )
    assert bert.returncode == 0, bert.stderr[-3000:]
    marian = marian_run({**made, "marian": sources["marian"]}, tmp_path / "marian", "trainer.max_steps=2")
    assert marian.returncode == 0, marian.stderr[-3000:]
    assert not (bert.dir / "hf_source" / "model.safetensors").exists()  # the checkpoint holds the weights
    assert (marian.dir / "hf_source" / "generation_config.json").is_file()
    shutil.rmtree(sources["bert"])
    shutil.rmtree(sources["marian"])

    ours = load_run(bert.dir, data=True)
    correct = total = 0
    with torch.no_grad():
        for batch in ours.datamodule.test_dataloader():
            correct += int((ours.model(batch["src"], types=batch["types"]).argmax(-1) == batch["label"]).sum())
            total += len(batch["label"])
    assert correct / total == pytest.approx(bert.results["metrics"]["test/acc"], abs=1e-9)
    proc = prunelab_cli("export", str(bert.dir), "--format", "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(bert.dir / "hf").eval()
    texts, _ = H.sentiment(8, 5)
    enc = transformers.AutoTokenizer.from_pretrained(bert.dir / "hf")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = ours.model(enc["input_ids"], types=enc["token_type_ids"])
        torch.testing.assert_close(hf(**enc).logits, want, atol=1e-5, rtol=1e-5)
    assert hf.config.id2label == {0: "positive", 1: "negative"}
    proc = prunelab_cli("heads", str(bert.dir))
    assert proc.returncode == 0, proc.stderr[-3000:]

    nmt = load_run(marian.dir)
    proc = prunelab_cli("export", str(marian.dir), "--format", "hf")
    assert proc.returncode == 0, proc.stderr[-3000:]
    hf = transformers.MarianMTModel.from_pretrained(marian.dir / "hf").eval()
    enc = transformers.AutoTokenizer.from_pretrained(marian.dir / "hf")(
        H.copy_pairs(4, 5)[0], return_tensors="pt", padding=True
    )
    start = torch.full((4, 1), hf.config.decoder_start_token_id)
    with torch.no_grad():
        got = hf(**enc, decoder_input_ids=start).logits
        torch.testing.assert_close(got, nmt.model(enc["input_ids"], start), atol=1e-5, rtol=1e-5)

    shutil.rmtree(sources["tsv"])  # the data are needed to score heads: one clear line
    proc = prunelab_cli("heads", str(bert.dir))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1 and str(sources["tsv"]) in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_width_pruned_bert_reloads_and_exports_narrower(made: dict[str, Path], tmp_path: Path) -> None:
    """pruner=structured on an imported BERT: heads and neurons cut out, the run reloads through load_run (weights_only
    checkpoints) to the accuracy it reported, and its Hugging Face export is the narrower network, with our logits."""
    transformers = pytest.importorskip("transformers")
    from prunelab.export import export_hf_run
    from prunelab.training import load_run

    run = encoder_run(made, tmp_path / "run", "pruner=structured", "sparsity=0.3", "pruner.importance_batches=2")
    assert run.returncode == 0, run.stderr[-3000:]
    ours = load_run(run.dir, data=True)
    widths = {layer.ff.width for layer in ours.model.enc}
    assert len(widths) == 1 and widths.pop() < ours.model.cfg.d_ff  # per layer: every feed-forward as narrow
    assert reloaded_accuracy(ours) == pytest.approx(run.results["metrics"]["test/acc"], abs=1e-9)
    folder, _ = export_hf_run(run.dir, tmp_path / "hf")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert hf.config.intermediate_size == ours.model.enc[0].ff.width
    batch = next(iter(ours.datamodule.test_dataloader()))
    with torch.no_grad():
        theirs = hf(input_ids=batch["src"], token_type_ids=batch["types"], attention_mask=batch["src"] != 0).logits
        torch.testing.assert_close(theirs, ours.model(batch["src"], types=batch["types"]), atol=1e-5, rtol=1e-5)
