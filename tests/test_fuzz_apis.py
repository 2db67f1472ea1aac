"""Schemathesis fuzzes every service's OpenAPI schema: no request, valid or not, with a token or without, gets a 5xx.

Each operation of each service (every ``esper.services`` entry point) gets a bounded number of generated
requests, schema-conforming and schema-violating, each sent twice: without a token (401 expected) and with
an admin's (development HS256). Examples are derandomised, so a failure reproduces. Karn and Tamiyo talk
to a real Urza served beside them.

No server error is excused: the integer bounds issue 15's faults named (query offsets, interface features,
IR versions beyond 64 bits) are in the contracts and the API schemas now, so those requests get 400.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from esper_runtime.testing import DEV_SECRET, hs256_token

from .services import SERVICES, build

#: Generated requests per operation and generation mode (each sent with and without a token).
EXAMPLES = 60

@pytest.fixture(scope="module")
def urza_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An Urza for Karn and Tamiyo to call (development mode, HS256)."""
    from esper.standalone import _ServedApp

    served = _ServedApp("urza", build("urza", tmp_path_factory.mktemp("urza-backend"), development=True,
                                      ESPER_AUTH_HS256_SECRET=DEV_SECRET))
    served.start(60)
    yield served.url
    served.stop()


@dataclass
class _Outcome:
    """What fuzzing one service found."""

    failures: list[str] = field(default_factory=list)  # every server error fails the test
    calls: Counter[tuple[bool, bool]] = field(default_factory=Counter)  # (refused, with a token) -> requests


def _fuzz_operation(service: str, operation: Any, mode: Any, token: dict[str, str], out: _Outcome) -> None:
    """Bounded generated requests for one operation in one generation mode, each without and with ``token``."""

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        generated = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        for headers in ({}, token):
            case.headers = generated | headers  # the header the schema's security scheme made goes
            response = case.call()
            out.calls[(response.status_code >= 400, bool(headers))] += 1
            if response.status_code >= 500:
                line = (f"{service} {operation.label} [{mode.value}, {'token' if headers else 'no token'}] -> "
                        f"{response.status_code}: {case.as_curl_command()}  {response.text[:300]}")
                out.failures.append(line)

    with contextlib.suppress(Unsatisfiable):  # nothing to generate in this mode (no parameters: no bad input)
        run()


def _fuzz(app: Any, service: str) -> _Outcome:
    """Every operation of ``app``'s schema, in both generation modes."""
    from schemathesis import GenerationMode, openapi

    admin = {"Authorization": f"Bearer {hs256_token('admin', lifetime_s=3600)}"}
    out = _Outcome()
    for result in openapi.from_asgi("/openapi.json", app).get_all_operations():
        for mode in GenerationMode:
            _fuzz_operation(service, result.ok(), mode, admin, out)
    # Both halves really ran: with a token some requests succeed, without one every protected request fails.
    assert out.calls[(False, True)] > 0, f"{service}: no request with a token succeeded: {dict(out.calls)}"
    return out


@pytest.mark.slow  # hundreds of generated requests per service
@pytest.mark.parametrize("name", SERVICES)
def test_no_generated_request_gets_a_server_error(name: str, tmp_path: Path, urza_url: str) -> None:
    service = build(name, tmp_path, development=True, ESPER_AUTH_HS256_SECRET=DEV_SECRET, ESPER_URZA_URL=urza_url,
                    ESPER_URZA_TOKEN=hs256_token("operator", lifetime_s=3600))
    with TestClient(service.app):
        out = _fuzz(service.app, name)
    assert not out.failures, f"{len(out.failures)} server errors:\n" + "\n".join(out.failures[:20])
