"""Everything the tests and scripts need is in the repository: a fresh clone with nothing beside
it runs `bash .ci/run`. The game's DDL and data generator are copied fixtures, pinned by hash."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "babylon_game"

# Reading a sibling checkout: `../shared`, a path built from "shared", or the old override.
OUTSIDE_READS = re.compile(r"""\.\./shared|TC_SHARED_DIR|/\s*["']shared["']""")


def _scanned_files() -> list[Path]:
    files = [p for base in ("app", "app_dev", "tests") for p in (ROOT / base).rglob("*.py")]
    files += [p for p in (ROOT / ".ci").iterdir() if p.is_file()]
    return [p for p in files if p != Path(__file__).resolve()]


def test_no_test_or_script_reads_files_beside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _scanned_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE_READS.search(line)
    ]
    assert not offenders, "reads outside the repository:\n" + "\n".join(offenders)


def test_the_games_fixtures_are_the_documented_copies() -> None:
    readme = (FIXTURES / "README.md").read_text()
    for name in ("schema.sql", "generate.py"):
        digest = hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest()
        assert f"`{digest}`" in readme, f"{name} changed: refresh it as README.md says and update its hash"


def test_the_babylon_fixture_uses_the_copies_in_the_repository() -> None:
    from tests.fixtures import babylon

    assert babylon.SCHEMA_SQL == FIXTURES / "schema.sql"
    assert babylon.GENERATE_PY == FIXTURES / "generate.py"
    assert babylon.SCHEMA_SQL.is_file()
    assert babylon.GENERATE_PY.is_file()


def test_the_readme_points_at_nothing_beside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert not OUTSIDE_READS.search(readme)
    assert "shared/babylon" not in readme
