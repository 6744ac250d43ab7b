"""Import openpipe-art without letting it change this process's environment (art-serverless.md §7).

`import art` runs `load_dotenv()`, which can put a `.env`'s `WANDB_API_KEY` (or anything else)
into `os.environ`; with the key there, ART and wandb contact W&B hosts and can block the event
loop for minutes. LiteLLM (imported by ART) downloads a cost map unless told not to, and wandb
reports errors to Sentry. So: set the quiet switches, snapshot the environment, import, and
put the environment back exactly as it was (plus the switches). Settings were read already
and never see what ART's `.env` loading added.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from types import ModuleType

from app.config import scrub_secret_env

QUIET_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of LiteLLM's cost map
    "WANDB_ERROR_REPORTING": "false",  # no Sentry
    "TQDM_DISABLE": "1",  # no progress bars per training job
    "WANDB_SILENT": "true",
}
_lock = threading.Lock()


def import_art() -> ModuleType:
    """`import art` with environment hygiene; safe to call many times and from threads."""
    with _lock:
        if "art" in sys.modules and "art.serverless.backend" in sys.modules:
            scrub_secret_env()
            return sys.modules["art"]
        before = dict(os.environ)
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        try:
            module = importlib.import_module("art")
            importlib.import_module("art.serverless.backend")
        finally:
            restore_environment(before)
        return module


def restore_environment(before: dict[str, str]) -> None:
    """Drop what was added since `before` (except the quiet switches), undo what was changed."""
    for key in set(os.environ) - set(before):
        if key not in QUIET_ENV:
            del os.environ[key]
    for key, value in before.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    scrub_secret_env()
