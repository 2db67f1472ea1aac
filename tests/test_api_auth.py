"""Every REST API of the platform checks tokens and roles, in production mode, RS256 against a JWKS file.

The cases are generated from the services' own routes (every ``esper.services`` entry point, so a new
service or a new endpoint cannot escape): each mutating endpoint answers 401 without a valid token, 403 to
each role below the one it needs, and lets that role and the ones above through; each read needs a viewer.
Services with an API refuse to start in production mode without keys, and every 500 carries a trace id.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from esper_runtime import AuthConfigError, Role
from esper_runtime.auth import route_roles
from esper_runtime.registry import load_factory
from esper_runtime.testing import DEV_SECRET, TestIdentityProvider, hs256_token

from .services import SERVICES, build

#: Routes open to anyone: probes and Prometheus. (/docs and /openapi.json are not API routes.)
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/metrics")}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
#: POSTs that only read, so a viewer may call them (a query too large for a URL, a dry-run validation).
READING_POSTS = {("urza", "/api/v1/kernels/query"), ("urza", "/api/v1/blueprints/check")}


def _route_cases() -> list[Any]:
    """(service, method, path, role) for every API route, read from the services built in a scratch folder."""
    import tempfile

    cases = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in SERVICES:
            service = build(name, Path(scratch) / name, None)
            for (method, path), role in sorted(route_roles(service.app).items()):
                if (method, path) not in OPEN_ROUTES:
                    cases.append(pytest.param(name, method, path, role, id=f"{name}-{method}-{path}"))
    return cases


ROUTES = _route_cases()


@pytest.fixture(scope="module")
def idp() -> TestIdentityProvider:
    return TestIdentityProvider()


@pytest.fixture(scope="module")
def clients(idp: TestIdentityProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TestClient]]:
    """One started service per name with an API, all verifying RS256 tokens against the test JWKS."""
    folder = tmp_path_factory.mktemp("auth")
    jwks = idp.write_jwks(folder / "jwks.json")
    started: dict[str, TestClient] = {}
    try:
        for name in {case.values[0] for case in ROUTES}:
            client = TestClient(build(name, folder / name, jwks).app, raise_server_exceptions=False)
            started[name] = client.__enter__()
        yield started
    finally:
        for client in started.values():
            client.__exit__(None, None, None)


def _call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    concrete = re.sub(r"\{[^}]+\}", "x", path)
    body = {"content": b"{}", "headers": {"content-type": "application/json", **(headers or {})}}
    return client.request(method, concrete, **(body if method in MUTATING else {"headers": headers or {}}))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_api_route_declares_the_role_it_needs() -> None:
    assert ROUTES, "no API routes found: the services' entry points are not installed"
    missing = [c.id for c in ROUTES if c.values[3] is None]
    assert not missing, f"API routes without require(Role...): {missing}"
    weak = [c.id for c in ROUTES if c.values[1] in MUTATING and c.values[3] < Role.OPERATOR
            and (c.values[0], c.values[2]) not in READING_POSTS]
    assert not weak, f"mutating routes open to viewers: {weak}"


@pytest.mark.parametrize(("service", "method", "path", "role"), [c for c in ROUTES if c.values[1] in MUTATING])
def test_mutating_endpoint_answers_401_and_403_by_role(clients: dict[str, TestClient], idp: TestIdentityProvider,
                                                       service: str, method: str, path: str, role: Role) -> None:
    client = clients[service]
    missing = _call(client, method, path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["trace_id"]
    stranger = TestIdentityProvider(issuer=idp.issuer, kid=idp.kid)  # same key id, another key
    refused = {
        "not a JWT": "not-a-jwt",
        "expired": idp.token("admin", lifetime_s=-120),
        "signed by another key": stranger.token("admin"),
        "unknown key id": idp.token("admin", kid="no-such-key"),
        "another audience": idp.token("admin", aud="another-api"),
        "another issuer": idp.token("admin", iss="https://elsewhere.test"),
        "HS256 where RS256 is required": hs256_token("admin"),
    }
    for why, token in refused.items():
        answer = _call(client, method, path, _bearer(token))
        assert answer.status_code == 401, (why, answer.text)
        assert 'error="invalid_token"' in answer.headers["www-authenticate"], why
    for below in [r for r in Role if r < role] + [None]:
        held = below.label if below else []
        answer = _call(client, method, path, _bearer(idp.token(held)))
        assert answer.status_code == 403, (below, answer.text)
        # (a token without any role may already fail the viewer check of the route's router)
        assert f"needs the {role.label if below else ''}" in answer.json()["detail"]
    for enough in [r for r in Role if r >= role]:
        answer = _call(client, method, path, _bearer(idp.token(enough.label)))
        assert answer.status_code not in (401, 403), (enough, answer.text)


@pytest.mark.parametrize(("service", "method", "path", "role"), [c for c in ROUTES if c.values[1] not in MUTATING])
def test_reads_need_a_viewer(clients: dict[str, TestClient], idp: TestIdentityProvider, service: str, method: str,
                             path: str, role: Role) -> None:
    client = clients[service]
    assert _call(client, method, path).status_code == 401
    assert _call(client, method, path, _bearer(idp.token([]))).status_code == 403
    assert _call(client, method, path, _bearer(idp.token("viewer"))).status_code not in (401, 403)


def test_roles_may_sit_in_a_nested_claim(tmp_path: Path, idp: TestIdentityProvider) -> None:
    os.environ["ESPER_AUTH_ROLES_CLAIM"] = "realm_access.roles"
    try:
        service = build("tamiyo", tmp_path, idp.write_jwks(tmp_path / "jwks.json"))
    finally:
        del os.environ["ESPER_AUTH_ROLES_CLAIM"]
    with TestClient(service.app) as client:
        nested = idp.token([], realm_access={"roles": ["offline_access", "viewer"]})
        assert client.get("/api/v1/policy", headers=_bearer(nested)).status_code == 200
        assert client.get("/api/v1/policy", headers=_bearer(idp.token("viewer"))).status_code == 403


@pytest.mark.parametrize("name", SERVICES)
def test_production_refuses_to_start_an_api_without_keys(name: str, tmp_path: Path) -> None:
    service = build(name, tmp_path, None)
    protected = any(role is not None for role in route_roles(service.app).values())
    if not protected:  # a worker pool with only /healthz and /metrics needs no identity provider
        with TestClient(service.app) as client:
            assert client.get("/healthz").status_code in (200, 503)
        return
    with pytest.raises(AuthConfigError, match=r"refuses to start.*ESPER_AUTH_JWKS"), TestClient(service.app):
        pass


def test_hs256_secrets_are_refused_outside_development(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPER_AUTH_HS256_SECRET", DEV_SECRET)
    with pytest.raises(AuthConfigError, match="HS256 shared secrets are for development"):
        build("tamiyo", tmp_path, None)
    monkeypatch.setenv("ESPER_DEVELOPMENT", "true")
    with TestClient(load_factory("tamiyo")().app) as client:
        assert client.get("/api/v1/policy").status_code == 401
        assert client.get("/api/v1/policy", headers=_bearer(hs256_token("viewer"))).status_code == 200


def test_esper_serve_exits_2_naming_the_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from esper_runtime.cli import app

    monkeypatch.delenv("ESPER_DEVELOPMENT", raising=False)
    monkeypatch.delenv("ESPER_AUTH_JWKS", raising=False)
    result = CliRunner().invoke(app, ["serve", "narset-coordinator", "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "ESPER_AUTH_JWKS" in "".join(result.output.split())


@pytest.mark.parametrize("name", SERVICES)
def test_every_500_carries_a_trace_id(name: str, tmp_path: Path) -> None:
    service = build(name, tmp_path, None, development=True)

    def broken() -> None:
        raise RuntimeError("disk on fire")

    service.app.add_api_route("/test/broken", broken, methods=["GET"])
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    with TestClient(service.app, raise_server_exceptions=False) as client:
        traced = client.get("/test/broken", headers={"traceparent": f"00-{caller}-00f067aa0ba902b7-01"})
        fresh = client.get("/test/broken")
    assert traced.status_code == 500 and traced.json()["trace_id"] == caller == traced.headers["x-trace-id"]
    assert "disk on fire" not in traced.text and caller in traced.json()["detail"]
    trace_id = fresh.json()["trace_id"]
    assert fresh.status_code == 500 and re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != caller
    assert fresh.headers["x-trace-id"] == trace_id
