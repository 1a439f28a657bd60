"""The floors of DESIGN.md as checked facts: the import-linter contract (.importlinter) holds, it names every
top-level module of prunelab (a new module is placed on a floor, not left outside the contract), and no function
imports a prunelab module (an import inside a function is how a cycle hides) unless its line says why with
`# lazy:` (an optional heavy dependency)."""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

import prunelab

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(prunelab.__file__).resolve().parent


def contract_layers() -> list[set[str]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    rows = [r.strip() for r in parser["importlinter:contract:floors"]["layers"].splitlines() if r.strip()]
    return [{m.strip() for m in row.split("|")} for row in rows]


def test_the_floors_contract_holds() -> None:
    """import-linter in its own process: it configures logging and disables the loggers that exist (prunelab's
    included), which would silence the log records later tests in this process check."""
    pytest.importorskip("importlinter.cli")
    check = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_every_top_level_module_is_on_a_floor() -> None:
    named = set().union(*contract_layers())
    modules = {
        f"prunelab.{p.stem if p.is_file() else p.name}"
        for p in SRC.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert modules - named == set(), "place these on a floor in .importlinter"
    assert named - modules == set(), "the contract names modules that do not exist"


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a prunelab module inside a function body whose line lacks `# lazy:`."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.ImportFrom):  # relative: inside the package
                names = ["prunelab"]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "prunelab" or n.startswith("prunelab.") for n in names) and "# lazy:" not in "".join(
                lines[node.lineno - 1 : node.end_lineno]
            ):
                found.append((node.lineno, names[0]))
    return sorted(set(found))


def test_no_function_imports_a_prunelab_module() -> None:
    offenders = {
        str(p.relative_to(SRC)): hits for p in sorted(SRC.rglob("*.py")) if (hits := function_level_imports(p))
    }
    assert offenders == {}


def test_the_check_finds_a_function_level_import(tmp_path: Path) -> None:
    """The detector itself, on a planted module: a hidden import is found, a module-level one and a `# lazy:` one
    are not."""
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from prunelab.errors import UserError\n\n"
        "def f():\n    from prunelab.training import train\n    return train\n\n"
        "def g():\n    import prunelab.export  # lazy: pulls in torch's sparse kernels\n"
    )
    assert function_level_imports(planted) == [(4, "prunelab.training")]
