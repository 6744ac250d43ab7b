"""Start and stop the gateway's upstream client and capture writer."""

from fastapi import FastAPI


async def startup(app: FastAPI) -> None:
    """Placeholder until the gateway exists."""


async def shutdown(app: FastAPI) -> None:
    """Placeholder until the gateway exists."""
