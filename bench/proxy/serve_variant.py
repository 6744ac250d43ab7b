#!/usr/bin/env python3
"""`training-control serve` with another upstream client under the gateway (bench-only).

    .venv/bin/python bench/proxy/serve_variant.py --client httpx -- --host 127.0.0.1 --port 14201

Everything but the HTTP client is the production gateway (same settings, auth, resolution,
request log); the client comes from bench/proxy/variants.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `bench.proxy`

from app import cli
from app.gateway import lifecycle
from bench.proxy.variants import VARIANTS, factory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=VARIANTS, required=True)
    args, serve_args = parser.parse_known_args()
    lifecycle.open_upstream = factory(args.client)  # type: ignore[assignment]
    sys.exit(cli.main(["serve", *[a for a in serve_args if a != "--"]]))


if __name__ == "__main__":
    main()
