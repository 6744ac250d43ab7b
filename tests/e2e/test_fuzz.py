"""The API fuzzed from its own OpenAPI schema (schemathesis) against the running service
(uvicorn, lifespan on, SQLite and Postgres), authenticated.

Every operation in `/openapi.json`, read at run time: a route another package adds is fuzzed
too, with nothing to list here. Each response is checked for: no 5xx; every error in the
OpenAI envelope `{"error": {message, type, param, code}}`; status codes, content types,
headers and bodies as the schema documents them; invalid input rejected with a 4xx. Examples
are bounded (`FUZZ_MAX_EXAMPLES`, default 8 per operation and mode) to keep the suite within
its budget; bench/reliability/fuzz.py runs the long version, stateful sequences included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import schemathesis

from tests.conftest import make_settings, run_blocking, truncate_all
from tests.fixtures.emulator import EMULATOR_API_KEY, EmulatorServer
from tests.fixtures.fuzzing import (
    AUTH,
    ServedApp,
    fuzz_operations,
    fuzz_settings,
    run_stateful,
    serve_in_thread,
)

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "8"))
STATEFUL_SEQUENCES = int(os.environ.get("FUZZ_STATEFUL_SEQUENCES", "10"))


@pytest.fixture
def fuzzed_service(
    db_url: str, emulator_server: EmulatorServer, babylon_db_factory: Callable[..., str]
) -> Iterator[ServedApp]:
    run_blocking(truncate_all, db_url)
    settings = make_settings(
        db_url,
        # the game's database (schema, no rows): its routes are fuzzed as they run in production
        babylon_database_url=babylon_db_factory(generate=False),
        **fuzz_settings(emulator_server.base_url, EMULATOR_API_KEY),
    )
    with serve_in_thread(settings) as served:
        yield served


def test_every_operation_answers_fuzzed_input_without_5xx_in_the_envelope_and_as_documented(
    fuzzed_service: ServedApp,
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed_service.base_url}/openapi.json", headers=AUTH)
    documented = {
        f"{method.upper()} {path}" for path, item in schema.raw_schema["paths"].items() for method in item
    }

    report = fuzz_operations(schema, fuzzed_service.base_url, max_examples=MAX_EXAMPLES)

    assert set(report.operations) == documented  # every route in the schema was fuzzed
    assert not report.failures, "\n\n".join(f"{op}:\n{text}" for op, text in report.failures.items())


def test_sequences_that_follow_the_links_between_operations_answer_as_documented(
    fuzzed_service: ServedApp,
) -> None:
    # e.g. POST /v1/fine_tuning/jobs → its id into GET …/{id}, …/cancel, …/events (the links
    # schemathesis infers from the schema)
    schema = schemathesis.openapi.from_url(f"{fuzzed_service.base_url}/openapi.json", headers=AUTH)

    failure = run_stateful(schema, fuzzed_service.base_url, sequences=STATEFUL_SEQUENCES)

    assert failure is None, failure
