"""Runs recorded before data/ was laid out by task kind (issue 37) name their data module by its old path in
results.json; `load_run` rebuilds their data with the class's present path."""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import get_class
from omegaconf import OmegaConf

from prunelab.data.base import MOVED_TARGETS

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def test_every_moved_target_names_the_same_class_at_its_present_path() -> None:
    for old, new in MOVED_TARGETS.items():
        assert get_class(new).__name__ == old.rsplit(".", 1)[1]


def test_the_presets_name_present_paths_only() -> None:
    for path in CONF.glob("*.yaml"):
        target = OmegaConf.load(path)._target_
        assert target not in MOVED_TARGETS, path.name
        get_class(target)


def test_a_recorded_config_of_the_old_layout_is_covered() -> None:
    """The committed results of experiments/ recorded the old paths: each is one of MOVED_TARGETS or a present one."""
    root = Path(__file__).resolve().parents[2] / "experiments"
    recorded = {
        json.loads(f.read_text()).get("config", {}).get("data", {}).get("_target_") for f in root.rglob("*results.json")
    }
    for target in recorded - {None}:
        get_class(MOVED_TARGETS.get(target, target))
