"""Every option of every config group composes, and what it describes can be built."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
from hydra.utils import instantiate

from prunelab.cli.train import CONF_DIR
from prunelab.config import TRAINER_FIXED
from prunelab.models import Transformer
from prunelab.pruning import Pruner
from prunelab.training.build import build_logger, trainer_kwargs
from tests.integration.conftest import compose_cfg

GROUPS = {
    g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
    for g in ("model", "data", "pruner", "hardware", "logger", "experiment")
}


def test_groups_have_the_options_the_design_names() -> None:
    assert {"transformer_tiny", "transformer_base", "transformer_big"} <= set(GROUPS["model"])
    assert {"synthetic_translation", "parallel_text", "synthetic_classification"} <= set(GROUPS["data"])
    assert {"classifier_tiny", "classifier_base"} <= set(GROUPS["model"])
    assert {"none", "mp"} <= set(GROUPS["pruner"])
    assert {"cpu", "gpu", "tpu", "ddp"} <= set(GROUPS["hardware"])
    assert {"wandb", "csv", "none"} <= set(GROUPS["logger"])


def test_defaults(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, [])
    choices = cfg.hydra.runtime.choices
    assert (choices.model, choices.data, choices.pruner, choices.hardware, choices.logger) == (
        "transformer_tiny",
        "synthetic_translation",
        "none",
        "cpu",
        "wandb",
    )
    assert cfg.logger.mode == "offline"
    assert cfg.sparsity == 0.0 and "seed" in cfg


@pytest.mark.parametrize("option", GROUPS["model"])
def test_model_options(tmp_path: Path, option: str) -> None:
    cfg = compose_cfg(tmp_path, [f"model={option}"])
    extra = {"num_classes": 3} if option.startswith("classifier") else {}
    args = {"vocab_size": 100, "pad_id": 0}
    if "path" in cfg.model.keys():  # a pretrained checkpoint: a tiny one made here, with its tokenizer
        from prunelab.hf.tokenizer import PretrainedTokenizer
        from tests import hf_checkpoints as H

        if option == "hf_encoder":
            folder = H.encoder_checkpoint(tmp_path / "ckpt", *H.sentiment(20, 0), steps=0)
            data = ["data=synthetic_classification"]
        elif option == "hf_causal_lm":
            folder = H.causal_lm_checkpoint(tmp_path / "ckpt", H.documents(20, 0), "llama", steps=0)
            data = ["data=synthetic_lm"]
        else:
            folder = H.marian_checkpoint(tmp_path / "ckpt", *H.copy_pairs(20, 0), steps=0)
            data = []
        cfg = compose_cfg(tmp_path, [f"model={option}", f"model.path={folder}", *data])
        assert cfg.data.tokenizer == str(folder)  # the data read the checkpoint's own tokenizer
        from prunelab.data.language_modeling import PretrainedLmTokenizer

        tok = (PretrainedLmTokenizer if option == "hf_causal_lm" else PretrainedTokenizer)(folder)
        args = {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id}
        extra = {"num_classes": 2} if option == "hf_encoder" else {}
    else:
        assert cfg.data.tokenizer is None
    model = instantiate(cfg.model)(**args, **extra)
    assert isinstance(model, Transformer)
    if option in ("decoder_tiny", "hf_causal_lm"):  # decoder-only: a causal language model, the data's kind
        assert model.kind == "language_modeling" and model.cfg.enc_layers == 0
        assert model.cfg.n_kv_heads == 2 and model.cfg.positions == "rope"
    expected = {
        "transformer_base": (6, 512, 2048, 8, 6),
        "transformer_big": (6, 1024, 4096, 16, 6),
        "classifier_base": (12, 768, 3072, 12, 0),  # BERT-base shape
    }.get(option)
    if expected:
        c = model.cfg
        assert (c.enc_layers, c.d_model, c.d_ff, c.n_heads, c.dec_layers) == expected


@pytest.mark.parametrize("option", GROUPS["pruner"])
def test_pruner_options_read_top_level_sparsity(tmp_path: Path, option: str) -> None:
    cfg = compose_cfg(tmp_path, [f"pruner={option}", "sparsity=0.8"])
    pruner = instantiate(cfg.pruner)
    assert isinstance(pruner, Pruner)
    # AttendOut learns its sparsity; the dense baseline has none
    assert getattr(pruner, "sparsity", 0.0) == (0.0 if option in ("none", "attendout") else 0.8)


@pytest.mark.parametrize("option", GROUPS["hardware"])
def test_hardware_options_are_trainer_arguments(tmp_path: Path, option: str) -> None:
    cfg = compose_cfg(tmp_path, [f"hardware={option}"])
    accepted = set(inspect.signature(L.Trainer.__init__).parameters)
    assert set(cfg.hardware) <= accepted and set(cfg.trainer) <= accepted and set(TRAINER_FIXED) <= accepted
    if option == "cpu":  # the only accelerator this machine has: build the real Trainer
        L.Trainer(**trainer_kwargs(cfg), logger=False, default_root_dir=tmp_path)
    if option in ("gpu", "ddp"):
        assert cfg.hardware.precision == "bf16-mixed"


@pytest.mark.parametrize("option", GROUPS["logger"])
def test_logger_options(tmp_path: Path, option: str) -> None:
    cfg = compose_cfg(tmp_path, [f"logger={option}"])
    if "_target_" not in cfg.logger:
        assert option == "none"
        return
    logger = build_logger(cfg, tmp_path)
    assert Path(logger.save_dir) == tmp_path  # logs go to the run folder


def test_data_options(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["data.train_size=50", "data.valid_size=5", "data.test_size=5"])
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert len(dm.examples["train"]) == 50
    (tmp_path / "corpus").mkdir()
    for split in ("train", "valid", "test"):
        for lang, words in (("en", "a b c d"), ("de", "w x y z")):
            (tmp_path / "corpus" / f"{split}.{lang}").write_text("\n".join([words] * 20) + "\n")
    cfg = compose_cfg(tmp_path, ["data=parallel_text", f"data.dir={tmp_path / 'corpus'}", "data.vocab_size=20"])
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.examples["valid"]) == 20


@pytest.mark.parametrize("logger", GROUPS["logger"])
@pytest.mark.parametrize("option", GROUPS["experiment"])
def test_experiment_options_build_with_every_logger(tmp_path: Path, option: str, logger: str) -> None:
    cfg = compose_cfg(tmp_path, [f"experiment={option}", f"logger={logger}"])
    assert cfg.trainer.max_steps >= 1
    if "_target_" in cfg.logger:
        build_logger(cfg, tmp_path)  # an experiment must not set keys that some logger does not take
    instantiate(cfg.pruner)
