"""The authenticator on its own: keys from a JWKS file or URL (rotation included), claims, roles, the cache."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from esper_runtime.auth import AuthConfigError, Authenticator, InvalidTokenError, Role
from esper_runtime.testing import DEV_SECRET, ISSUER, TestIdentityProvider, hs256_token


@pytest.fixture
def idp() -> TestIdentityProvider:
    return TestIdentityProvider()


class _JwksServer:
    """Serves whatever ``jwks`` holds at /certs and counts the fetches."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    server = _JwksServer()
    yield server
    server.server.shutdown()


def test_rs256_against_a_jwks_file_names_the_caller_and_its_highest_role(idp: TestIdentityProvider,
                                                                         tmp_path: Path) -> None:
    auth = Authenticator(jwks=str(idp.write_jwks(tmp_path / "jwks.json")), issuer=ISSUER, audience="esper")
    principal = auth.authenticate(idp.token(["viewer", "operator", "unrelated"], subject="tezzeret"))
    assert principal.subject == "tezzeret" and principal.role is Role.OPERATOR
    assert principal.may(Role.VIEWER) and principal.may(Role.OPERATOR) and not principal.may(Role.ADMIN)
    assert auth.authenticate(idp.token("admin viewer")).role is Role.ADMIN  # a space-separated claim
    assert auth.authenticate(idp.token([])).role is None
    assert auth.mode == "jwks" and not auth.open


@pytest.mark.parametrize(("why", "claims", "message"), [
    ("expired beyond the leeway", {"exp": int(time.time()) - 60}, "expired"),
    ("not valid yet", {"nbf": int(time.time()) + 600}, "not yet valid"),
    ("another audience", {"aud": "grafana"}, "Audience"),
    ("no audience", {"aud": None}, "aud"),
    ("another issuer", {"iss": "https://evil.test"}, "Issuer"),
    ("no expiry", {"exp": None}, "exp"),
])
def test_claims_are_checked_as_an_oidc_client_checks_them(idp: TestIdentityProvider, tmp_path: Path, why: str,
                                                          claims: dict[str, Any], message: str) -> None:
    auth = Authenticator(jwks=str(idp.write_jwks(tmp_path / "jwks.json")), issuer=ISSUER, audience="esper",
                         leeway_s=30)
    token_claims = jwt.decode(idp.token("admin"), options={"verify_signature": False})
    token_claims.update(claims)
    token = jwt.encode({k: v for k, v in token_claims.items() if v is not None}, idp.private_key,
                       algorithm="RS256", headers={"kid": idp.kid})
    with pytest.raises(InvalidTokenError, match=message):
        auth.authenticate(token)


def test_a_recently_expired_token_passes_within_the_leeway(idp: TestIdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(jwks=str(idp.write_jwks(tmp_path / "jwks.json")), leeway_s=30)
    assert auth.authenticate(idp.token("viewer", lifetime_s=-5)).role is Role.VIEWER


@pytest.mark.parametrize("algorithm", ["none", "HS256"])
def test_algorithm_confusion_is_refused(idp: TestIdentityProvider, tmp_path: Path, algorithm: str) -> None:
    """A token "signed" with no algorithm, or HMAC-signed with the public key as the secret, is not RS256."""
    jwks_file = idp.write_jwks(tmp_path / "jwks.json")
    auth = Authenticator(jwks=str(jwks_file))
    claims = {"sub": "mallory", "aud": "esper", "exp": int(time.time()) + 60, "roles": ["admin"]}
    if algorithm == "none":
        token = jwt.encode(claims, None, algorithm="none", headers={"kid": idp.kid})
    else:
        header = json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.kid}).encode()
        signing_input = jwt.utils.base64url_encode(header) + b"." + jwt.utils.base64url_encode(
            json.dumps(claims).encode())
        import hashlib
        import hmac

        secret = jwks_file.read_bytes()
        signature = jwt.utils.base64url_encode(hmac.new(secret, signing_input, hashlib.sha256).digest())
        token = (signing_input + b"." + signature).decode()
    with pytest.raises(InvalidTokenError, match="not accepted"):
        auth.authenticate(token)


def test_a_rotated_jwks_file_is_read_again_for_a_new_key_id(idp: TestIdentityProvider, tmp_path: Path) -> None:
    path = idp.write_jwks(tmp_path / "jwks.json")
    auth = Authenticator(jwks=f"file://{path}")
    assert auth.authenticate(idp.token("viewer")).role is Role.VIEWER
    successor = TestIdentityProvider()
    with pytest.raises(InvalidTokenError, match="unknown signing key"):
        auth.authenticate(successor.token("viewer"))
    both = {"keys": idp.jwks()["keys"] + successor.jwks()["keys"]}
    path.write_text(json.dumps(both))
    later = time.time() + 5
    import os

    os.utime(path, (later, later))  # the same second as the first write on coarse file systems
    assert auth.authenticate(successor.token("operator")).role is Role.OPERATOR


def test_keys_come_from_a_jwks_url_fetched_once_per_new_key_id(jwks_server: _JwksServer) -> None:
    first, second = TestIdentityProvider(), TestIdentityProvider()
    jwks_server.jwks = first.jwks()
    auth = Authenticator(jwks=jwks_server.url, refetch_cooldown_s=0)
    assert auth.needs_fetch(first.token("viewer"))
    assert auth.authenticate(first.token("viewer")).role is Role.VIEWER
    assert auth.authenticate(first.token("admin")).role is Role.ADMIN
    assert jwks_server.fetches == 1 and not auth.needs_fetch(first.token("viewer"))
    jwks_server.jwks = {"keys": first.jwks()["keys"] + second.jwks()["keys"]}  # the provider rotates its key
    assert auth.authenticate(second.token("operator")).role is Role.OPERATOR
    assert jwks_server.fetches == 2
    with pytest.raises(InvalidTokenError, match="unknown signing key"):
        auth.authenticate(TestIdentityProvider().token("admin"))


def test_an_unreachable_jwks_url_refuses_the_token_with_the_reason() -> None:
    auth = Authenticator(jwks="http://127.0.0.1:9/certs", fetch_timeout_s=1)
    with pytest.raises(InvalidTokenError, match="cannot fetch the JWKS"):
        auth.authenticate(TestIdentityProvider().token("viewer"))


def test_verified_tokens_are_remembered_but_never_past_their_expiry(idp: TestIdentityProvider,
                                                                    tmp_path: Path) -> None:
    auth = Authenticator(jwks=str(idp.write_jwks(tmp_path / "jwks.json")), leeway_s=0)
    token = idp.token("viewer", lifetime_s=2)
    assert auth.authenticate(token) is auth.authenticate(token)  # the second answer came from the cache
    time.sleep(2.5)
    with pytest.raises(InvalidTokenError, match="expired"):
        auth.authenticate(token)


def test_hs256_development_tokens_and_their_secret(tmp_path: Path) -> None:
    auth = Authenticator(hs256_secret=DEV_SECRET)
    assert auth.mode == "hs256" and auth.authenticate(hs256_token("admin")).role is Role.ADMIN
    with pytest.raises(InvalidTokenError, match="Signature"):
        auth.authenticate(hs256_token("admin", secret="another-secret-that-is-long-enough-000"))
    with pytest.raises(AuthConfigError, match="at least 32 bytes"):
        Authenticator(hs256_secret="short")
    with pytest.raises(AuthConfigError, match="either a JWKS"):
        Authenticator(jwks=str(TestIdentityProvider().write_jwks(tmp_path / "k.json")), hs256_secret=DEV_SECRET)


def test_an_unreadable_jwks_file_stops_the_service_at_once(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read the JWKS file"):
        Authenticator(jwks=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AuthConfigError, match="cannot read the JWKS file"):
        Authenticator(jwks=str(tmp_path / "bad.json"))
    with pytest.raises(AuthConfigError, match="use a file path"):
        Authenticator(jwks="ftp://idp/certs")
