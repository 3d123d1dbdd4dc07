"""Property-based requests generated from /openapi.json: no input makes a server error."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from omax.serve.app import build_app  # noqa: E402
from tests.fake_runtime import FakeRuntime  # noqa: E402

app = build_app(FakeRuntime(), max_body_bytes=1 << 20)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case):
    case.call_and_validate(checks=[not_a_server_error], excluded_checks=[])
