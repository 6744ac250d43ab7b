"""ART's `.env` trap (art-serverless.md §7.3), in a fresh interpreter: importing ART through the service keeps the environment clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
import dotenv
import dotenv.main

# art's load_dotenv() looks for a .env above the installed package (the project's, in a
# project venv): point that lookup at a .env of our own, and record what it did
dotenv.main.find_dotenv = lambda *a, **k: sys.argv[1]
real_load_dotenv = dotenv.load_dotenv
seen = {}


def recording_load_dotenv(*args, **kwargs):
    loaded = real_load_dotenv(*args, **kwargs)
    seen["key_right_after_load_dotenv"] = os.environ.get("WANDB_API_KEY")
    return loaded


dotenv.load_dotenv = recording_load_dotenv
from app.training.art_env import import_art

import_art()
seen.update({k: os.environ.get(k) for k in ("WANDB_API_KEY", "TC_FROM_DOTENV", "LITELLM_LOCAL_MODEL_COST_MAP")})
print(json.dumps(seen))
"""


def test_importing_art_through_the_service_keeps_dotenv_out_of_the_environment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("WANDB_API_KEY=leaked-key-from-dotenv\nTC_FROM_DOTENV=yes\n")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "TC_FROM_DOTENV")}
    # app/__init__.py also switches python-dotenv off; turn that off here so this test shows
    # that import_art's own environment restore is enough on its own
    env["PYTHON_DOTENV_DISABLED"] = "0"
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(dotenv)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # the trap is real: `import art` put the .env's key into os.environ ...
    assert seen["key_right_after_load_dotenv"] == "leaked-key-from-dotenv"
    # ... and import_art took it (and everything else the .env added) out again
    assert seen["WANDB_API_KEY"] is None
    assert seen["TC_FROM_DOTENV"] is None
    assert seen["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
