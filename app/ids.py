"""Public ids: a readable prefix and 24 random hex digits (`ftjob-…`, `file-…`, `ds-…`)."""

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
