"""Hidden-state distillation of a depth-pruned model that went out to Hugging Face and came back (issue 36 item 5).

The export takes removed layers out of the network and renumbers the rest (`dec.3` of the pruned model is layer 1
of the folder); config.json records the kept layers' original numbers (`prunelab_kept_layers`) and the import reads
them back, so that `task.distill.hidden_weight > 0` matches each student layer to the teacher's layer of the same
original number. The reference values are computed from transformers' own models (the source checkpoint as the
teacher, the exported folder as the student), their layers' outputs taken with forward hooks; without the record
the layers cannot be matched and the distiller refuses in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from prunelab.errors import UserError  # noqa: E402
from prunelab.hf.causal_lm import load_hf_causal_lm  # noqa: E402
from prunelab.hf.export import export_hf  # noqa: E402
from prunelab.hf.marian import load_hf_marian  # noqa: E402
from prunelab.models.causal_lm import IGNORE  # noqa: E402
from prunelab.models.surgery import layer_numbers, remove_components  # noqa: E402
from prunelab.pruning import NoPruner  # noqa: E402
from prunelab.tasks import LanguageModelingTask  # noqa: E402
from prunelab.tasks.distill import Distiller, layer_pairs  # noqa: E402
from tests.tiny import hf_llama_config  # noqa: E402
from tests.unit.test_hf_marian_import import hf_marian  # noqa: E402

V = 101
LAYERS = 4
GONE = (1, 2)  # the layers depth pruning removes: the export keeps 0 and 3, renumbered 0 and 1
KEY = "prunelab_kept_layers"


def whole_layers(*layers: int, side: str = "dec", kinds: tuple[str, ...] = ("sa", "ff")) -> list[str]:
    return [f"{side}.{i}.{k}" for i in layers for k in kinds]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a random 4-layer Llama saved by transformers, its export with layers 1 and 2 removed)."""
    root = tmp_path_factory.mktemp("depth")
    torch.manual_seed(0)
    config = hf_llama_config(vocab_size=V, num_hidden_layers=LAYERS)
    hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # every layer moved off its initial value, so that each computes something else
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    hf.save_pretrained(root / "src")
    pruned = load_hf_causal_lm(root / "src").eval()
    remove_components(pruned, whole_layers(*GONE))
    export_hf(pruned, root / "src", root / "export")
    return root / "src", root / "export"


def lm_batch() -> dict[str, torch.Tensor]:
    src = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(1))
    target = torch.roll(src, -1, 1)
    target[:, :2] = IGNORE  # context that is not scored
    target[1, 6:] = IGNORE  # padding
    return {"src": src, "target": target, "n_tokens": 0}


@torch.no_grad()
def hf_layer_outputs(folder: Path, src: torch.Tensor) -> list[torch.Tensor]:
    """The output of every decoder layer of transformers' own model of `folder`, in its order."""
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    got: list[torch.Tensor] = []

    def keep(module: Any, args: Any, out: Any) -> None:
        got.append((out[0] if isinstance(out, tuple) else out).detach())

    hooks = [layer.register_forward_hook(keep) for layer in model.model.layers]
    model(src)
    for h in hooks:
        h.remove()
    return got


def masked_mse(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean(-1)[keep].mean())


def test_the_export_records_each_kept_layers_original_number(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """config.json of the export says which layers it kept; transformers loads the folder (the key kept as a config
    attribute); the import knows each layer's original number; a second depth pruning of the re-imported model
    composes the numbers; an export that removed no layer writes no record."""
    src, out = folders
    assert json.loads((out / "config.json").read_text())[KEY] == {"dec": [0, 3]}
    back, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()) and len(back.model.layers) == 2 and getattr(back.config, KEY) == {"dec": [0, 3]}
    student = load_hf_causal_lm(out)
    assert student.cfg.layer_numbers == {"dec": (0, 3)} and layer_numbers(student)["dec"] == [0, 3]

    remove_components(student, whole_layers(0))  # its layer 0 is the original layer 0: original 3 is left
    again = export_hf(student, out, tmp_path / "again")
    assert json.loads((again / "config.json").read_text())[KEY] == {"dec": [3]}
    assert load_hf_causal_lm(again).cfg.layer_numbers == {"dec": (3,)}

    whole = export_hf(load_hf_causal_lm(src), src, tmp_path / "whole")
    assert KEY not in json.loads((whole / "config.json").read_text())
    assert load_hf_causal_lm(whole).cfg.layer_numbers is None


def test_a_reimported_export_distils_against_the_teacher_layers_of_the_same_number(
    folders: tuple[Path, Path],
) -> None:
    """The student's layers 0 and 1 (originally 0 and 3) are matched to the teacher's 0 and 3, and the logged hidden
    loss is the mean of those two masked MSEs computed from transformers' models; matching by index (teacher layer 1
    for the student's layer 1) would give another value."""
    src, out = folders
    teacher, student = load_hf_causal_lm(src), load_hf_causal_lm(out)
    batch = lm_batch()
    task = LanguageModelingTask(student, NoPruner(), tokenizer=None)  # type: ignore[arg-type]
    task.distiller = Distiller(teacher, alpha=0.0, hidden_weight=1.0)
    task.logged = []
    task.log_training_step = lambda loss, batch, parts=None: task.logged.append(dict(parts or {}))
    task.train()
    task.training_step(batch, 0)

    ht, hs = hf_layer_outputs(src, batch["src"]), hf_layer_outputs(out, batch["src"])
    assert len(ht) == LAYERS and len(hs) == 2
    keep = batch["target"] != IGNORE
    want = (masked_mse(hs[0], ht[0], keep) + masked_mse(hs[1], ht[3], keep)) / 2
    by_index = (masked_mse(hs[0], ht[0], keep) + masked_mse(hs[1], ht[1], keep)) / 2
    assert abs(want - by_index) > 0.05 * want  # the test tells the two matchings apart
    assert float(task.logged[-1]["hidden_loss"]) == pytest.approx(want, rel=1e-4)
    assert task.distiller.pairs == {"dec.0": "dec.0", "dec.1": "dec.3"}


def test_an_export_without_the_record_is_refused_in_one_line(folders: tuple[Path, Path], tmp_path: Path) -> None:
    """A renumbered folder whose config.json does not say which layers it kept (an older export, another tool): 2
    student layers against 4 teacher layers cannot be matched, so hidden_weight > 0 is one UserError (at the task's
    check and at the training step), while distilling the logits alone still works."""
    src, out = folders
    bare = Path(shutil.copytree(out, tmp_path / "bare"))
    config = json.loads((bare / "config.json").read_text())
    config.pop(KEY, None)  # (an export by the code before the record never had it)
    (bare / "config.json").write_text(json.dumps(config))
    teacher, student = load_hf_causal_lm(src), load_hf_causal_lm(bare)
    distiller = Distiller(teacher, hidden_weight=1.0, source="RUN")
    with pytest.raises(UserError, match=r"dec stack has 2 layers and the teacher's 4.*hidden_weight") as e:
        distiller.check_student(student)
    assert "\n" not in str(e.value) and str(e.value).startswith("task.distill.teacher=RUN: ")
    task = LanguageModelingTask(student, NoPruner(), tokenizer=None)  # type: ignore[arg-type]
    task.distiller = distiller
    task.log_training_step = lambda loss, batch, parts=None: None
    with pytest.raises(UserError, match="cannot match them"):
        task.train().training_step(lm_batch(), 0)
    task.distiller = Distiller(teacher, hidden_weight=0.0)
    assert torch.isfinite(task.training_step(lm_batch(), 0))


def test_marian_records_both_stacks(tmp_path: Path) -> None:
    """Encoder layer 1 and decoder layer 0 of a 2+2-layer MarianMT removed: the folder records {enc: [0], dec: [1]}
    and the student's decoder layer 0 is matched to the teacher's decoder layer 1."""
    hf_marian(tame=False).save_pretrained(tmp_path / "src")
    pruned = load_hf_marian(tmp_path / "src")
    remove_components(pruned, whole_layers(1, side="enc") + whole_layers(0, side="dec", kinds=("sa", "ea", "ff")))
    out = export_hf(pruned, tmp_path / "src", tmp_path / "out")
    assert json.loads((out / "config.json").read_text())[KEY] == {"enc": [0], "dec": [1]}
    student = load_hf_marian(out)
    assert student.cfg.layer_numbers == {"enc": (0,), "dec": (1,)}
    assert layer_pairs(student, load_hf_marian(tmp_path / "src")) == {"enc.0": "enc.0", "dec.0": "dec.1"}
