"""Who may call a service's REST API: bearer JWTs verified as an OIDC client verifies them, and three roles.

Every service's routes declare the least role they need with :func:`require`::

    router = APIRouter(dependencies=[require(Role.VIEWER)])               # reads
    @router.post("/policy", dependencies=[require(Role.OPERATOR)])       # policy, blueprints, proposals
    @router.post("/kernels/{id}/status", dependencies=[require(Role.ADMIN)])   # destructive operations

Roles are ordered: an admin may do what an operator may, an operator what a viewer may. A request without
a token, or with one that fails verification, gets ``401`` with a ``WWW-Authenticate`` challenge; a valid
token without the role gets ``403``.

Tokens are verified like an OIDC relying party does it (signature, ``exp``, ``nbf``, ``iat``, ``iss``, ``aud``):

* production: ``RS256`` against the identity provider's JWKS, a file (``ESPER_AUTH_JWKS=/etc/esper/jwks.json``)
  or a URL (``ESPER_AUTH_JWKS=https://idp/.../certs``, fetched when a token names a key id not seen yet);
* development only: ``HS256`` with a shared secret (``ESPER_AUTH_HS256_SECRET``).

A service in production mode (the default) with protected routes refuses to start unless a JWKS is
configured. ``ESPER_DEVELOPMENT=true`` is the development flag: it allows HS256, and with no key at all
the API is open (every caller acts as an admin, and the service says so in its log at start). Tests and
the standalone platform run that way; no chart or compose file ships a key or a token.

The roles are read from the claim ``ESPER_AUTH_ROLES_CLAIM`` names (``roles`` by default; a dotted path such
as ``realm_access.roles`` reaches into nested claims), a list of names or one space-separated string.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from .settings import ServiceSettings

log = logging.getLogger(__name__)

#: Algorithms accepted for keys from the JWKS (what OIDC providers sign access tokens with by default).
JWKS_ALGORITHMS = ["RS256"]
#: Verified tokens are remembered this long (never past their ``exp``): a service sees the same token on
#: every call of a client, and checking a signature costs far more than the dictionary lookup.
VERIFIED_TOKEN_TTL_S = 60.0
_VERIFIED_TOKENS_KEPT = 4096


class Role(enum.IntEnum):
    """What a caller may do; each role includes the ones below it."""

    VIEWER = 1  # reads
    OPERATOR = 2  # policy, blueprints, proposals, pipeline results, trainer heartbeats
    ADMIN = 3  # destructive operations

    @property
    def label(self) -> str:
        """The role's name as tokens carry it: ``viewer``, ``operator`` or ``admin``."""
        return self.name.lower()


class AuthConfigError(ValueError):
    """The authentication settings cannot work (or are missing where production needs them)."""


class InvalidTokenError(Exception):
    """A token that must be refused (401), with the reason for the ``WWW-Authenticate`` challenge."""


@dataclass(frozen=True)
class Principal:
    """The verified caller: its subject, its highest role and every claim of its token."""

    subject: str
    role: Role | None
    claims: Mapping[str, Any] = field(default_factory=dict)

    def may(self, role: Role) -> bool:
        """True when this caller holds ``role`` or a higher one."""
        return self.role is not None and self.role >= role


#: The caller of a service running open (development flag, no key configured).
OPEN_ACCESS = Principal(subject="anonymous (development: authentication off)", role=Role.ADMIN)


class _JwksFile:
    """Signing keys from a JWKS file, read again when a token names a key id the file did not hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = -1.0
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            keys = jwt.PyJWKSet.from_json(self.path.read_text())
        except (OSError, jwt.PyJWKSetError, ValueError) as exc:
            raise AuthConfigError(f"cannot read the JWKS file {self.path}: {exc}") from exc
        self._keys = {k.key_id or "": k.key for k in keys.keys}
        self._mtime = stat.st_mtime

    def key(self, kid: str) -> Any:
        """The public key with id ``kid`` (reloading a changed file once); InvalidTokenError when unknown."""
        found = self._keys.get(kid)
        if found is None:
            with self._lock:
                try:
                    changed = self.path.stat().st_mtime != self._mtime
                except OSError:
                    changed = False
                if changed:
                    try:
                        self._load()
                    except AuthConfigError as exc:
                        log.error("%s", exc)
                found = self._keys.get(kid)
        if found is None:
            raise InvalidTokenError(f"unknown signing key {kid!r}")
        return found

    def cached(self, kid: str) -> bool:
        return kid in self._keys


class _JwksUrl:
    """Signing keys fetched from the identity provider's JWKS URL (cached; fetched again for a new key id)."""

    def __init__(self, url: str, timeout_s: float, cooldown_s: float) -> None:
        self.url = url
        # The cooldown bounds how often tokens naming unknown key ids can make the service fetch the JWKS.
        self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=int(max(1, timeout_s)),
                                       cooldown_duration=cooldown_s)
        self._seen: dict[str, Any] = {}

    def key(self, kid: str) -> Any:
        """The public key with id ``kid``; fetches the JWKS when it is not known yet (blocking)."""
        found = self._seen.get(kid)
        if found is not None:
            return found
        try:
            found = self._client.get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as exc:
            raise InvalidTokenError(f"cannot fetch the JWKS from {self.url} to check key {kid!r}: {exc}") from exc
        except jwt.PyJWKClientError as exc:
            raise InvalidTokenError(f"unknown signing key {kid!r}: {exc}") from exc
        self._seen[kid] = found
        return found

    def cached(self, kid: str) -> bool:
        return kid in self._seen


def _open_jwks(source: str, timeout_s: float, cooldown_s: float) -> _JwksFile | _JwksUrl:
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return _JwksUrl(source, timeout_s, cooldown_s)
    if parsed.scheme == "file":
        return _JwksFile(Path(parsed.path))
    if parsed.scheme:
        raise AuthConfigError(f"auth_jwks {source!r}: use a file path, file://, http:// or https://")
    return _JwksFile(Path(source).expanduser())


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


class Authenticator:
    """Verifies bearer tokens and finds the caller's role (see the module docstring).

    ``open`` is True when nothing is verified (development flag, no key configured). A JWKS URL is fetched
    again for an unknown key id at most once per ``refetch_cooldown_s``.
    """

    def __init__(self, *, jwks: str | None = None, hs256_secret: str | None = None, issuer: str | None = None,
                 audience: str | None = None, roles_claim: str = "roles", leeway_s: float = 30.0,
                 fetch_timeout_s: float = 5.0, refetch_cooldown_s: float = 30.0) -> None:
        if jwks and hs256_secret:
            raise AuthConfigError("configure either a JWKS (RS256) or an HS256 secret, not both")
        if hs256_secret is not None and len(hs256_secret.encode()) < 32:
            raise AuthConfigError("the HS256 secret must be at least 32 bytes long")
        self._keys = _open_jwks(jwks, fetch_timeout_s, refetch_cooldown_s) if jwks else None
        self._secret = hs256_secret.encode() if hs256_secret else None
        self.issuer = issuer or None
        self.audience = audience or None
        self.roles_claim = roles_claim
        self.leeway_s = leeway_s
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._verified_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Authenticator:
        """The authenticator the settings describe; AuthConfigError for settings that cannot be used."""
        secret = settings.auth_hs256_secret.get_secret_value() if settings.auth_hs256_secret else None
        if secret and not settings.development:
            raise AuthConfigError("HS256 shared secrets are for development: configure the identity provider's "
                                  "JWKS (ESPER_AUTH_JWKS) in production, or set ESPER_DEVELOPMENT=true")
        return cls(jwks=settings.auth_jwks, hs256_secret=secret, issuer=settings.auth_issuer,
                   audience=settings.auth_audience, roles_claim=settings.auth_roles_claim,
                   leeway_s=settings.auth_leeway_s)

    @property
    def open(self) -> bool:
        """True when no key is configured: every request is let through (development only)."""
        return self._keys is None and self._secret is None

    @property
    def mode(self) -> str:
        """``jwks``, ``hs256`` or ``open``: what verifies tokens (for logs and /healthz)."""
        return "jwks" if self._keys is not None else "hs256" if self._secret is not None else "open"

    def needs_fetch(self, token: str) -> bool:
        """True when verifying ``token`` may have to fetch keys over the network (an unseen key id at a URL)."""
        if not isinstance(self._keys, _JwksUrl) or token in self._verified:
            return False
        try:
            kid = jwt.get_unverified_header(token).get("kid") or ""
        except jwt.PyJWTError:
            return False
        return not self._keys.cached(kid)

    def authenticate(self, token: str) -> Principal:
        """The caller ``token`` proves; InvalidTokenError with the reason when it proves nothing."""
        if self.open:
            return OPEN_ACCESS
        now = time.time()
        with self._verified_lock:
            hit = self._verified.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        claims = self._verify(token)
        principal = Principal(subject=str(claims.get("sub") or claims.get("client_id") or "unknown"),
                              role=self._role(claims), claims=claims)
        until = min(now + VERIFIED_TOKEN_TTL_S, float(claims["exp"]) + self.leeway_s)
        with self._verified_lock:
            self._verified[token] = (principal, until)
            while len(self._verified) > _VERIFIED_TOKENS_KEPT:
                self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"not a JWT: {exc}") from exc
        algorithm = header.get("alg")
        if self._keys is not None:
            if algorithm not in JWKS_ALGORITHMS:
                raise InvalidTokenError(f"algorithm {algorithm!r} is not accepted (expected RS256)")
            key: Any = self._keys.key(str(header.get("kid") or ""))
            algorithms = JWKS_ALGORITHMS
        else:
            if algorithm != "HS256":
                raise InvalidTokenError(f"algorithm {algorithm!r} is not accepted (expected HS256)")
            key, algorithms = self._secret, ["HS256"]
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=algorithms, audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s, options={"require": ["exp"], "verify_aud": self.audience is not None})
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"{type(exc).__name__}: {exc}") from exc
        return claims

    def _role(self, claims: Mapping[str, Any]) -> Role | None:
        value = _claim(claims, self.roles_claim)
        names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        held = [Role[n.upper()] for n in names if isinstance(n, str) and n.upper() in Role.__members__]
        return max(held) if held else None


_bearer = HTTPBearer(auto_error=False, description="A JWT from the identity provider: roles viewer, operator, admin")


def _challenge(error: str, description: str) -> dict[str, str]:
    clean = description.replace('"', "'").replace("\\", "/")[:300]
    return {"WWW-Authenticate": f'Bearer error="{error}", error_description="{clean}"'}


class RoleRequirement:
    """The FastAPI dependency :func:`require` returns; ``role`` is readable, so tests can list every route's."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __repr__(self) -> str:
        return f"require(Role.{self.role.name})"

    async def __call__(self, request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        # ``async`` although verification never awaits (unless keys must be fetched): it runs on the event
        # loop instead of costing every request a trip to the thread pool.
        auth: Authenticator = request.app.state.esper_auth
        if auth.open:
            return OPEN_ACCESS
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # not yet verified by another requirement of this route (a router's, say)
            principal = await self._authenticate(auth, request, credentials)
        if not principal.may(self.role):
            held = principal.role.label if principal.role else "no role"
            raise HTTPException(403, f"this needs the {self.role.label} role; {principal.subject} holds {held}",
                                headers=_challenge("insufficient_scope", f"requires {self.role.label}"))
        return principal

    @staticmethod
    async def _authenticate(auth: Authenticator, request: Request,
                            credentials: HTTPAuthorizationCredentials | None) -> Principal:
        if credentials is None or not credentials.credentials:
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        token = credentials.credentials
        try:
            if auth.needs_fetch(token):
                principal = await run_in_threadpool(auth.authenticate, token)
            else:
                principal = auth.authenticate(token)
        except InvalidTokenError as exc:
            raise HTTPException(401, f"invalid bearer token: {exc}",
                                headers=_challenge("invalid_token", str(exc))) from None
        request.state.principal = principal
        return principal


def require(role: Role) -> Any:
    """A FastAPI dependency that lets through callers holding ``role`` (or a higher one); see the module doc."""
    return Depends(RoleRequirement(role))


def route_roles(app: Any) -> dict[tuple[str, str], Role | None]:
    """``(method, path) -> least role`` for every API route of ``app`` (None: the route requires none).

    Routes of included routers count with their router's dependencies (what FastAPI will really run).
    """
    from fastapi import routing

    # FastAPI >= 0.120 keeps included routers as one route each; iter_route_contexts flattens them.
    flatten = getattr(routing, "iter_route_contexts", None)
    found: dict[tuple[str, str], Role | None] = {}
    for route in flatten(app.routes) if flatten is not None else app.routes:
        dependant = getattr(route, "dependant", None)
        if dependant is None:  # not an API route: /docs, /openapi.json
            continue
        roles = [d.call.role for d in dependant.dependencies if isinstance(d.call, RoleRequirement)]
        for method in route.methods or ():
            found[(method, route.path)] = max(roles) if roles else None
    return found
