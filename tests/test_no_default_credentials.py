"""No credential ships with the deployment files: compose takes every secret from the operator's environment and
refuses to start without the required ones; an empty service token is allowed (the service then runs unauthenticated
against Urza only where Urza allows it). The chart's side is tested in test_deploy_check.py (no Secret rendered)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|JWKS|TOKEN|PRIVATE", re.IGNORECASE)
REQUIRED = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")  # ${NAME:?why}: compose stops when it is unset
EMPTY_DEFAULT = re.compile(r"^\$\{[A-Z0-9_]+:-\}$")  # ${NAME:-}: unset means none, never a made-up value


def _environments(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    found = []
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        items = env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)
        found += [(name, key, str(value)) for key, value in items]
    for key, value in (compose.get("x-esper-env") or {}).items():
        found.append(("x-esper-env", key, str(value)))
    return found


def test_every_credential_in_compose_comes_from_the_operator() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    secrets = [(svc, key, value) for svc, key, value in _environments(compose) if SECRET_NAME.search(key)]
    assert len(secrets) >= 10, "the compose file lost its database, S3 and identity settings"
    shipped = [(svc, key, value) for svc, key, value in secrets
               if not (REQUIRED.match(value) or EMPTY_DEFAULT.match(value))]
    assert not shipped, f"credentials with a value or a default in docker-compose.yml: {shipped}"
    assert {key for _svc, key, value in secrets if REQUIRED.match(value)} >= {
        "POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "ESPER_AUTH_JWKS"}


def test_the_reader_catches_a_shipped_password() -> None:
    compose = {"services": {"db": {"environment": {"POSTGRES_PASSWORD": "${ESPER_DB_PASSWORD:-esper}"}}}}
    [(_svc, _key, value)] = _environments(compose)
    assert not (REQUIRED.match(value) or EMPTY_DEFAULT.match(value))
