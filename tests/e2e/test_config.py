"""A bad setting stops every entry point (real processes) with one line naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.support import BIN, CLI, clean_env, free_port, run

pytestmark = pytest.mark.e2e

ENTRY_POINTS = {
    "training-control migrate": lambda port: [CLI, "migrate"],
    "training-control serve": lambda port: [CLI, "serve", "--port", str(port)],
    "uvicorn app.main:app": lambda port: [str(BIN / "uvicorn"), "app.main:app", "--port", str(port)],
}


BAD_VALUES = {"DATABASE_URL": "mysql://root@localhost/x", "LOG_FORMAT": "xml"}


@pytest.mark.parametrize(
    ("entry", "variable"),
    [
        ("training-control migrate", "DATABASE_URL"),
        ("training-control serve", "LOG_FORMAT"),
        ("uvicorn app.main:app", "DATABASE_URL"),
        ("uvicorn app.main:app", "LOG_FORMAT"),
    ],
)
def test_bad_setting_stops_the_process_with_one_line(entry: str, variable: str, tmp_path: Path) -> None:
    proc = run(
        ENTRY_POINTS[entry](free_port()),
        cwd=tmp_path,
        env=clean_env(**{variable: BAD_VALUES[variable], "ENVIRONMENT": "development"}),
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"training-control: invalid configuration: {variable}:")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "data").exists(), "nothing may be created before settings are valid"
