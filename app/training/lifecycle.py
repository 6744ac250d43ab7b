"""Start and stop the in-process job worker with the API (RUN_WORKER)."""

from fastapi import FastAPI


async def startup(app: FastAPI) -> None:
    """Placeholder until the worker exists."""


async def shutdown(app: FastAPI) -> None:
    """Placeholder until the worker exists."""
