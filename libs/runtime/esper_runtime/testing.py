"""A stand-in identity provider for tests and benchmarks: RSA keys, a JWKS file, and tokens with roles.

    idp = TestIdentityProvider()
    jwks = idp.write_jwks(tmp_path / "jwks.json")                  # ESPER_AUTH_JWKS for the service
    headers = idp.headers("operator")                              # {"Authorization": "Bearer ..."}

:data:`DEV_SECRET` and :func:`hs256_token` mint development (HS256) tokens. :func:`capture_spans` records the
spans made inside a block, with an in-memory exporter.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

#: A development HS256 secret for tests (32 bytes, as the runtime requires). Never used outside tests.
DEV_SECRET = "esper-tests-only-hs256-secret-0123456789"
AUDIENCE = "esper"
ISSUER = "https://idp.test/realms/esper"


def _claims(roles: list[str] | str, subject: str, lifetime_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    names = roles if isinstance(roles, str) else list(roles)  # a string is a space-separated claim
    return {"sub": subject, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + int(lifetime_s),
            "jti": uuid.uuid4().hex, "roles": names} | extra


def hs256_token(roles: list[str] | str, *, secret: str = DEV_SECRET, subject: str = "test-user",
                lifetime_s: float = 600, **extra: Any) -> str:
    """A development token holding ``roles`` (``viewer``, ``operator``, ``admin``), signed with ``secret``."""
    return jwt.encode(_claims(roles, subject, lifetime_s, {"iss": ISSUER} | extra), secret, algorithm="HS256")


class TestIdentityProvider:
    """An RSA signing key with a key id, published as a JWKS, minting RS256 access tokens."""

    __test__ = False  # not a pytest test class

    def __init__(self, issuer: str = ISSUER, kid: str | None = None) -> None:
        self.issuer = issuer
        self.kid = kid or uuid.uuid4().hex[:16]
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        """The public key as a JSON Web Key Set."""
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return {"keys": [public | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def write_jwks(self, path: Path) -> Path:
        """Write :meth:`jwks` to ``path``; returns the path."""
        path.write_text(json.dumps(self.jwks()))
        return path

    def token(self, roles: list[str] | str, *, subject: str = "test-user", lifetime_s: float = 600,
              kid: str | None = None, **extra: Any) -> str:
        """An RS256 token holding ``roles``; ``extra`` claims override the defaults (``exp``, ``aud``, ...)."""
        claims = _claims(roles, subject, lifetime_s, {"iss": self.issuer} | extra)
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": kid or self.kid})

    def headers(self, roles: list[str] | str, **options: Any) -> dict[str, str]:
        """``Authorization`` header carrying :meth:`token`."""
        return {"Authorization": f"Bearer {self.token(roles, **options)}"}


class _CaptureSwitch(Sampler):
    """Records spans only while a :func:`capture_spans` block runs (the process's provider outlives it)."""

    recording = False

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None, attributes: Any = None,
                      links: Any = None, trace_state: Any = None) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.recording else Decision.DROP, attributes)

    def get_description(self) -> str:
        return "esper-tests-capture-switch"


_capture_lock = threading.Lock()
_capture: tuple[_CaptureSwitch, InMemorySpanExporter] | None = None


@contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """Record every span the process makes inside the block into an in-memory exporter (tests only).

    The first call installs the process's tracer provider (OpenTelemetry allows one per process), so from then
    on tracing is active in this process; outside a block, spans are made but dropped.
    """
    global _capture
    with _capture_lock:
        if _capture is None:
            switch, exporter = _CaptureSwitch(), InMemorySpanExporter()
            provider = TracerProvider(resource=Resource.create({"service.name": "esper-tests"}), sampler=switch)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            _capture = switch, exporter
    switch, exporter = _capture
    exporter.clear()
    switch.recording = True
    try:
        yield exporter
    finally:
        switch.recording = False
