"""Schemathesis over /openapi.json: generated requests for every operation; no 5xx, no answer that breaks the
documented schema. The API runs with its own data directory and a queue no worker reads, so the generated
training jobs only ever queue."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from service.settings import Settings


@pytest.fixture(scope="module")
def fuzzed_app(tmp_path_factory: pytest.TempPathFactory, redis_url: str, keras_cache: Path) -> Iterator[FastAPI]:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    app = create_app(
        Settings(
            home=tmp_path_factory.mktemp("fuzz-home"),
            redis_url=redis_url,
            keras_cache=keras_cache,
            queue="fuzz-unconsumed",
            max_model_params=200_000,
        )
    )
    with TestClient(app):  # runs the lifespan: tables, Keras loaded
        yield app


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def test_no_server_errors_and_answers_match_the_schema(fuzzed_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation in /openapi.json is a valid one
        operations.append(result.ok())
    assert len(operations) >= 10
    seen: dict[str, set[int]] = defaultdict(set)
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(checks=CHECKS)
            seen[case.operation.label].add(response.status_code)

        fuzz()
    # Generated data reaches past validation: some requests succeed, others are refused with 4xx.
    statuses = {code for codes in seen.values() for code in codes}
    assert any(200 <= code < 300 for code in statuses), seen
    assert any(400 <= code < 500 for code in statuses), seen
