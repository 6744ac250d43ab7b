"""`training-control demo` as a user runs it: a real subprocess tree (emulator + service), --json."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import create_pg_database, drop_pg_database
from tests.fixtures.babylon import plain_dsn

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def run_demo(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "API_KEYS", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "app", "demo", "--json", "--workdir", str(tmp_path / "demo"), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        summary = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"--json printed no JSON document:\nstdout={result.stdout[-2000:]}\nstderr={result.stderr[-2000:]}"
        )
    return result.returncode, summary, result.stderr


def assert_every_stage_succeeded(summary: dict[str, Any]) -> None:
    stages = summary["stages"]
    assert list(stages) == ["start", "game", "dataset", "training", "inference", "next"], stages
    failed = {name: s for name, s in stages.items() if not s["ok"]}
    assert not failed, failed
    assert summary["ok"] is True


def no_demo_children_left(workdir: Path) -> list[str]:
    """Processes still running in the demo's work directory (its emulator and service run there)."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") == str(workdir):
                left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return left


def test_demo_runs_the_whole_loop_on_sqlite_and_the_emulator(tmp_path: Path) -> None:
    code, summary, stderr = run_demo(tmp_path)
    assert code == 0, stderr[-3000:]
    assert_every_stage_succeeded(summary)
    stages = summary["stages"]

    game = stages["game"]
    assert game["trajectories"] == 15
    assert len(game["windows"]) == 3
    assert game["captured"] >= 15  # every decision went through the gateway with metadata.trajectory_id
    assert game["pushed"] == 15

    dataset = stages["dataset"]
    assert dataset["dataset_id"].startswith("ds-")
    assert dataset["groups"] >= 1
    assert (
        dataset["trainable_turns"] == dataset["trajectories"]
    )  # each pushed turn joined its captured Choice

    training = stages["training"]
    assert training["status"] == "succeeded"
    assert training["fine_tuned_model"].startswith("wandb-artifact:///")
    assert training["steps"] == len(training["checkpoints"]) >= 1
    assert training["fine_tuned_model"] == training["checkpoints"][-1]["model"]

    answers = stages["inference"]["answers"]
    latest = training["fine_tuned_model"].rsplit(":", 1)[0] + ":latest"
    assert set(answers) == {training["fine_tuned_model"], latest}
    for answer in answers.values():
        assert answer["answer"]
        assert answer["served_by"] == training["fine_tuned_model"]  # the alias resolved to the newest step

    assert (tmp_path / "demo" / "training.db").exists()
    assert not no_demo_children_left(tmp_path / "demo")


def test_demo_with_a_babylon_db_writes_the_games_tables_and_reads_them_back(
    tmp_path: Path, babylon_db_factory: Any
) -> None:
    dsn = babylon_db_factory(generate=False)
    code, summary, stderr = run_demo(tmp_path, "--babylon-db", dsn)
    assert code == 0, stderr[-3000:]
    assert_every_stage_succeeded(summary)
    assert summary["stages"]["game"]["written_to_babylon"] == 15
    dataset = summary["stages"]["dataset"]
    # Every trajectory read back from the game's tables joined its captured Choice. (The game's
    # scorer may give a whole window equal rewards, and such a group is dropped: how many of the
    # three windows survive depends on the hour the demo plays, so the count is not fixed.)
    assert dataset["groups"] >= 1
    assert dataset["trainable_turns"] == dataset["trajectories"] == 5 * dataset["groups"]

    async def count_rows() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(
                await conn.fetchval(
                    'SELECT count(*) FROM trajectories WHERE "trajectoryId" LIKE $1', "demo-%"
                )
            )
        finally:
            await conn.close()

    assert asyncio.run(count_rows()) == 15


def test_demo_exits_non_zero_when_a_stage_fails(tmp_path: Path, babylon_db_factory: Any) -> None:
    # The game's database refuses the demo's trajectories: the game stage fails after the
    # services started, and the demo still stops them.
    dsn = babylon_db_factory(generate=False)

    async def refuse_writes() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("ALTER TABLE trajectories ADD CONSTRAINT demo_refused CHECK (false) NOT VALID")
        finally:
            await conn.close()

    asyncio.run(refuse_writes())
    code, summary, _ = run_demo(tmp_path, "--babylon-db", dsn)
    assert code == 1
    assert summary["ok"] is False
    assert summary["stages"]["start"]["ok"] is True
    assert summary["stages"]["game"]["ok"] is False
    assert "demo_refused" in summary["stages"]["game"]["error"]
    assert "dataset" not in summary["stages"]
    assert not no_demo_children_left(tmp_path / "demo")


def test_demo_refuses_a_game_database_without_the_games_schema_before_starting_anything(
    tmp_path: Path,
) -> None:
    dsn = plain_dsn(create_pg_database("demo_no_schema"))
    try:
        code, summary, stderr = run_demo(tmp_path, "--babylon-db", dsn)
    finally:
        drop_pg_database(dsn)
    assert code == 4
    assert stderr.splitlines() == [
        "training-control demo: the game's schema is missing in the --babylon-db database (no table "
        '"User", "trajectories", "market_outcomes", "training_batches", "trained_models"): load the '
        "game's DDL into an empty database first, e.g. `psql -v ON_ERROR_STOP=1 -d <database> -f "
        "tests/fixtures/babylon_game/schema.sql` (in this repository), then rerun"
    ]
    assert summary["stages"] == {}
    assert not (tmp_path / "demo").exists(), "nothing was started"


def test_demo_refuses_an_unreachable_game_database_in_one_line(tmp_path: Path) -> None:
    code, summary, stderr = run_demo(tmp_path, "--babylon-db", "postgresql://nobody@127.0.0.1:1/none")
    assert code == 1
    assert len(stderr.splitlines()) == 1
    assert stderr.startswith("training-control demo: cannot connect to the game's database at --babylon-db: ")
    assert summary["ok"] is False
    assert not (tmp_path / "demo").exists()


def test_ctrl_c_after_the_demo_ends_interrupted_with_every_hint_printed_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "API_KEYS", "DATABASE_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "demo", "--keep-running", "--workdir", str(tmp_path / "demo")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "service still running" in line:
                break
        assert any("service still running" in line for line in lines), "\n".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "\n".join(lines) + "\n" + rest
    assert proc.returncode == 130, output
    assert "interrupted" in rest
    assert "every stage succeeded" not in output
    assert "Demo interrupted after" in rest
    assert output.lower().count("where to look next") == 1, output
    assert "<key>" not in output
    key = re.search(r"API key (\S+)\)", output)
    assert key, output
    assert f"--api-key {key.group(1)}" in output  # the hint uses the key the demo made
    assert not no_demo_children_left(tmp_path / "demo")


def test_demo_rollout_promotes_the_better_checkpoint_and_rolls_back_the_worse(tmp_path: Path) -> None:
    code, summary, stderr = run_demo(tmp_path, "--rollout")
    assert code == 0, stderr[-3000:]
    rollouts = summary["stages"]["rollouts"]
    assert rollouts["ok"] is True
    better, worse = rollouts["step2"], rollouts["step3"]
    assert (better["state"], better["production_step"]) == ("promoted", 2)
    assert better["difference"]["lower"] > 0
    assert (worse["state"], worse["production_step"]) == ("rolled_back", 2)
    assert worse["difference"]["upper"] < 0
