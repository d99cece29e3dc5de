"""Fuzzing every service's OpenAPI document (and the gateway's) with schemathesis.

Bounded in examples per operation and derandomised, so a CI run is repeatable.
Checks: no 5xx, and every answer conforms to the documented status codes,
content types, headers and schemas. Cases it found are kept in test_fuzz_cases.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.api import register
from support.stack import start_stack
from titanium.runner import Stack

pytestmark = pytest.mark.stack  # every test fuzzes the services as processes

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def fuzz_stack(
    database_env: Any, keys: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, dict[str, str]]]:
    stack = start_stack({**database_env("sqlite"), **keys}, tmp_path_factory.mktemp("fuzz-logs"))
    with httpx.Client(base_url=stack.url("gateway"), timeout=10) as client:
        user = register(client)
    yield stack, user["headers"]
    stack.stop()


def _schema(fuzz_stack: tuple[Stack, dict[str, str]], service: Any) -> Any:
    stack, _ = fuzz_stack
    # Deleting the fuzzer's own account would turn the rest of the run into 401s.
    return schemathesis.openapi.from_url(f"{stack.url(service)}/openapi.json").exclude(
        method="DELETE", path="/api/users/me"
    )


def fuzz(schema: Any, headers: dict[str, str], mode: GenerationMode) -> list[str]:
    """Run every operation of `schema` through hypothesis; return the labels fuzzed.

    Driven by hand rather than by schemathesis' pytest plugin, which does not
    run under pytest 9.
    """
    labels = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except Unsatisfiable:
            # Nothing about this operation can be made invalid (no parameters, no
            # body): there is no negative case to send.
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        labels.append(operation.label)
    return labels


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
@pytest.mark.parametrize("service", ["gateway", "users", "auth", "blog"])
def test_fuzz_service(
    service: str, mode: GenerationMode, fuzz_stack: tuple[Stack, dict[str, str]]
) -> None:
    labels = fuzz(_schema(fuzz_stack, service), fuzz_stack[1], mode)
    assert labels, "the document has no operations"


def test_gateway_document_lists_only_public_paths(fuzz_stack: tuple[Stack, dict[str, str]]) -> None:
    stack, _ = fuzz_stack
    paths = set(httpx.get(f"{stack.url('gateway')}/openapi.json").json()["paths"])
    assert {"/api/login", "/api/register", "/api/users/me", "/blog/api/posts"} <= paths
    assert not [p for p in paths if p.startswith("/internal") or p in ("/verify", "/health")]
    assert Path(__file__).exists()
