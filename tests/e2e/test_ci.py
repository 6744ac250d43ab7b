"""CI must not pass vacuously: with CI=true a missing Postgres fails the Postgres tests
instead of skipping them, and .ci/run always runs both backends."""

from __future__ import annotations

import os
import sys
import tomllib

import pytest

from tests.fixtures.support import REPO, free_port, run

pytestmark = pytest.mark.e2e

# Any test that needs the Postgres backend will do; this one is quick.
PG_TEST = "tests/health/test_router.py::TestHealth::test_liveness"


def _pytest(**env: str) -> tuple[int, str]:
    environment = {**os.environ, "TEST_BACKENDS": "postgres", **env}
    environment.pop("PYTEST_ADDOPTS", None)
    proc = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", PG_TEST],
        cwd=REPO,
        env=environment,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def closed_port_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


def test_missing_postgres_fails_in_ci(closed_port_url: str) -> None:
    code, output = _pytest(CI="true", TEST_POSTGRES_URL=closed_port_url)
    assert code == 1, output
    assert "Postgres is not reachable" in output
    assert "1 error" in output or "1 failed" in output


def test_missing_postgres_is_skipped_outside_ci(closed_port_url: str) -> None:
    code, output = _pytest(CI="false", TEST_POSTGRES_URL=closed_port_url)
    assert code == 0, output
    assert "1 skipped" in output


def test_ci_script_runs_both_backends_and_fails_on_missing_postgres() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "export CI=true" in script
    assert "export TEST_BACKENDS=sqlite,postgres" in script
    assert "ruff format --check" in script
    assert ".venv/bin/mypy" in script


BROWSER_TEST = "tests/e2e/test_docs_browser.py"


def _browser_test(**env: str) -> tuple[int, str]:
    environment = {**os.environ, "TEST_BACKENDS": "sqlite", "TEST_CHROMIUM": "/nonexistent/chromium", **env}
    environment.pop("PYTEST_ADDOPTS", None)
    proc = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", BROWSER_TEST],
        cwd=REPO,
        env=environment,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_a_missing_browser_fails_the_docs_test_in_ci_and_skips_elsewhere() -> None:
    code, output = _browser_test(CI="true")
    assert code == 1, output
    assert "no browser at /nonexistent/chromium" in output
    code, output = _browser_test(CI="")
    assert code == 0, output
    assert "1 skipped" in output


def test_ci_installs_what_the_browser_test_needs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "apt-get install -y -qq chromium" in ci
    assert ci.index("pip install -q -e '.[dev]'") < ci.index("apt-get install -y -qq chromium")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dev_extra = pyproject["project"]["optional-dependencies"]["dev"]
    assert any(requirement.startswith("playwright") for requirement in dev_extra)
