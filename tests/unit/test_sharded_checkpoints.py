"""A checkpoint saved in shards (transformers' save_pretrained with a small max_shard_size: an index json and
several files, as T5-3B and NLLB-3.3B ship) imports to the same model as the single-file save; a shard missing or
short of the keys its index gives it is one error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunelab.errors import UserError
from prunelab.hf.families import load_hf

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    config = transformers.M2M100Config(
        vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.M2M100ForConditionalGeneration(config)
    one, many = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("many")
    model.save_pretrained(one)
    model.save_pretrained(many, max_shard_size="20KB")
    return one, many


def test_shards_import_as_the_single_file(saved: tuple[Path, Path]) -> None:
    one, many = saved
    index = json.loads((many / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (many / "model.safetensors").exists()
    a, b = load_hf(one).state_dict(), load_hf(many).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_missing_or_short_shard_is_one_error(saved: tuple[Path, Path], tmp_path: Path) -> None:
    _, many = saved
    index = json.loads((many / "model.safetensors.index.json").read_text())
    for f in many.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    shard = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / shard).unlink()
    with pytest.raises(UserError, match=f"shard {shard} named by model.safetensors.index.json is missing"):
        load_hf(tmp_path)
    (tmp_path / shard).write_bytes((many / sorted(set(index["weight_map"].values()))[0]).read_bytes())
    with pytest.raises(UserError, match=f"{shard}: lacks .* that model.safetensors.index.json puts there"):
        load_hf(tmp_path)
