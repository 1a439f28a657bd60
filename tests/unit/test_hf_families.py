"""The family registry: every family module satisfies the written protocol (prunelab.hf.family.Family), every
model_type has one module, and the README's families table says exactly what the registry claims."""

from __future__ import annotations

import re
from pathlib import Path

from prunelab.hf.families import FAMILIES, MODULES
from prunelab.hf.family import CAPABILITIES, missing

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_family_module_satisfies_the_protocol() -> None:
    assert {m.__name__: missing(m) for m in MODULES} == {m.__name__: [] for m in MODULES}


def test_missing_names_what_a_module_lacks() -> None:
    class Half:
        MODEL_TYPES = ("x",)
        ARCHITECTURES = ()

    gaps = missing(Half)
    assert "MODEL_CLASS" in gaps and "export_folder" in gaps and "ARCHITECTURES" not in gaps


def test_each_model_type_has_one_family() -> None:
    types = [t for m in MODULES for t in m.MODEL_TYPES]
    assert len(types) == len(set(types)) == len(FAMILIES)
    assert {"t5", "mt5", "bart", "mbart", "m2m_100", "marian"} <= set(FAMILIES)


def readme_table() -> dict[str, tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    text = README.read_text()
    block = text.split("<!-- families:")[1].split("<!-- families: end -->")[0]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not (m := re.fullmatch(r"`([a-z0-9_]+)`", cells[0])):
            continue
        flags = cells[3 : 3 + len(CAPABILITIES)]
        caps = tuple(c for c, f in zip(CAPABILITIES, flags, strict=True) if f == "yes")
        rows[m.group(1)] = (cells[1], cells[2], caps, tuple(c.strip() for c in cells[-1].split(",")))
    return rows


def test_readme_families_table_is_the_registry() -> None:
    want = {
        t: (m.ARCHITECTURES[t], m.TASK, tuple(m.FAMILY_CAPABILITIES[t]), tuple(m.FAMILY_CUTS[t]))
        for m in MODULES
        for t in m.MODEL_TYPES
    }
    assert readme_table() == want
