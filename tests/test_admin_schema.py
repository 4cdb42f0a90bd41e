"""Schemathesis over the admin API's own OpenAPI schema: no 5xx, no response off its schema.

Hypothesis generates requests for every operation from the served schema and
sends them to a real gateway (SQLite store); every response must be non-5xx,
have a documented status, a declared content type and a body that validates
against the schema. Bounded (examples per operation) to stay well under a minute.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.test_admin_api import ADMIN_KEY, admin_gateway, local_config
from tollhouse.admin.settings import AdminSettings

EXAMPLES = 25  # per operation; about 30 operations
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip
OPEN = AdminSettings(rate=10_000, burst=10_000, max_auth_failures=10**6)


def test_schemathesis_finds_no_server_error_and_no_schema_violation() -> None:
    with admin_gateway(local_config(), OPEN) as gw:
        schema = schemathesis.openapi.from_url(gw.url + "/admin/v1/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 25
        auth = {"authorization": f"Bearer {ADMIN_KEY}"}
        for operation in operations:
            _exercise(operation, gw.url, auth)


def _exercise(operation: Any, base_url: str, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

    run()
