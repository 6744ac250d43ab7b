"""The emulator is a test double: the service never imports it, and it never imports ART."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[3] / "app"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_cli_imports_the_emulator() -> None:
    importers = {
        str(path.relative_to(APP))
        for path in APP.rglob("*.py")
        if "emulator" not in path.relative_to(APP).parts
        and any(name == "app_dev.emulator" or name.startswith("app_dev.emulator.") for name in _imports(path))
    }

    assert importers <= {"cli/dev.py"}  # the `emulator` and `demo` commands, imported lazily


def test_importing_the_emulator_does_not_import_art() -> None:
    code = "import sys, app_dev.emulator, app_dev.emulator.server; print('art' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "False"
