"""W&B Training API emulator (development and tests only; nothing in the service imports it).

Serves what openpipe-art 0.5.18's ServerlessBackend calls (models, checkpoints, training jobs and
their events, chat completions) with W&B's auth and error shapes, plus fault injection and
counters. See tests/fixtures/emulator.py for how tests use it.
"""

from app_dev.emulator.app import create_emulator_app
from app_dev.emulator.config import DEFAULT_BASE_MODELS, EmulatorConfig
from app_dev.emulator.server import EmulatorServer
from app_dev.emulator.state import EmulatorError, EmulatorState

__all__ = [
    "DEFAULT_BASE_MODELS",
    "EmulatorConfig",
    "EmulatorError",
    "EmulatorServer",
    "EmulatorState",
    "create_emulator_app",
]
