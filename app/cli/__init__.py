"""The `training-control` command line (`python -m app` too): see app/cli/main.py."""

from app.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
