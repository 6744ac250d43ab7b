"""`training-control keys create/list/revoke` with scopes, model patterns, limits and expiry."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli.main import main
from app.cli.service import parse_duration
from app.config import get_settings


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    monkeypatch.chdir(tmp_path)  # no .env of the repository
    get_settings.cache_clear()


def test_a_scoped_limited_expiring_key_is_listed_with_all_it_may_do_but_never_its_value(
    database: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["keys", "create", "agents", "--scope", "inference", "--scope", "training"]
    argv += ["--models", "babylon-agent:*", "--rpm", "600", "--tpm", "200000", "--expires-in", "30d"]
    assert main(argv) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("tc-")

    assert main(["keys", "list"]) == 0
    line = capsys.readouterr().out.strip()
    assert key not in line
    fields = line.split("\t")
    assert fields[1] == "agents"
    assert fields[3:7] == [
        "active",
        "scopes=inference,training",
        "models=babylon-agent:*",
        "rpm=600 tpm=200000",
    ]
    assert fields[7].startswith("expires=20")

    assert main(["keys", "revoke", "agents"]) == 0
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    assert "\trevoked\t" in capsys.readouterr().out


def test_a_bad_option_is_refused_in_one_line(database: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "x", "--expires-in", "soon"]) == 1
    assert "--expires-in 'soon' is not a duration" in capsys.readouterr().err
    assert main(["keys", "create", "x", "--rpm", "0"]) == 1
    assert "rpm must be a whole number from 1 to 2147483647, got 0" in capsys.readouterr().err


def test_durations() -> None:
    assert [parse_duration(d) for d in ("90s", "45m", "12h", "30d", "2w")] == [
        90,
        2700,
        43200,
        2592000,
        1209600,
    ]
