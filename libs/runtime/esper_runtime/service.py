"""One shared way for a service to start: settings, logging, /healthz, /metrics, the bus, graceful shutdown.

A service subclasses :class:`Service`, adds its routes to ``self.app`` (each declaring the role it needs
with ``esper_runtime.auth.require``) and its bus subscriptions in ``on_start``; :meth:`Service.run` serves
it with uvicorn until SIGTERM/SIGINT, then stops consumers and flushes the bus before exiting, so nothing
acknowledged is lost.

Every app gets the runtime's HTTP layers (``esper_runtime.http``: a trace per request, one error body, a
trace id on every 500) and its authenticator (``app.state.esper_auth``). /healthz and /metrics stay open
(probes and Prometheus); /docs and /openapi.json too (the schema is no secret).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import Scope

from .auth import AuthConfigError, Authenticator, route_roles
from .body_guard import BodyGuard
from .http import add_inner_middleware, install_http_layers
from .logs import configure_logging
from .metrics import BusCollector, gauge
from .settings import ServiceSettings
from .tracing import configure_tracing, shutdown_tracing

if TYPE_CHECKING:
    from esper_oona import Bus

log = logging.getLogger(__name__)

HealthCheck = Callable[[], bool]
HealthView = Callable[[], Mapping[str, Any]]
#: Writes metric families in the Prometheus text format, for a service whose metrics are too many for the registry.
MetricsText = Callable[[], bytes]
#: Keys of the /healthz answer that a health view cannot take.
_HEALTH_KEYS = frozenset({"status", "service", "checks", "uptime_s"})


def _without_fastapi_spans() -> dict[str, Any]:
    """FastAPI's own request spans off, where it has them: the runtime's request context makes the one server span
    (with the trace id that error bodies quote), and per-dependency spans would cost every request."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "operation_spans": False}}
    return {}


class Service:
    """Base of every Esper service process."""

    #: Human-readable role, shown in the OpenAPI docs.
    description = "An Esper service."

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.registry = CollectorRegistry()
        self._bus: Bus | None = None
        self._checks: dict[str, HealthCheck] = {}
        self._views: dict[str, HealthView] = {}
        self._texts: list[MetricsText] = []
        self._started_at = time.time()
        self.up = gauge(self.registry, "esper_service_up")
        self.registry.register(BusCollector(self.name, lambda: self._bus))
        self.auth = Authenticator.from_settings(settings)
        self._auth_checked = False
        self.app = FastAPI(title=f"Esper {self.name}", description=self.description, lifespan=self._lifespan,
                           **_without_fastapi_spans())
        self.app.state.esper_auth = self.auth
        install_http_layers(self.app)
        self.app.add_api_route("/healthz", self._healthz, methods=["GET"], tags=["ops"])
        self.app.add_api_route("/metrics", self._metrics, methods=["GET"], tags=["ops"])
        # Inside the request context (its refusals carry the trace id), and innermost of the middleware.
        add_inner_middleware(self.app, BodyGuard, limit_for=self.body_limit,
                             read_timeout_s=settings.body_read_timeout_s)

    def body_limit(self, scope: Scope) -> int:
        """The largest body this request may carry; override to allow larger uploads on some paths."""
        return self.settings.max_body_bytes

    @property
    def bus(self) -> Bus:
        """The bus connection named by ``settings.bus_url``, opened on first use."""
        if self._bus is None:
            from esper_oona import connect

            self._bus = connect(self.settings.bus_url, producer_name=self.name, topic_prefix=self.settings.topic_prefix)
        return self._bus

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """Register a readiness check; /healthz answers 503 while any check returns False or raises."""
        self._checks[name] = check

    def add_health_view(self, name: str, view: HealthView) -> None:
        """Add a section ``name`` to the /healthz answer (a worker's counters, say); it never changes the status."""
        if name in _HEALTH_KEYS:
            raise ValueError(f"health view name {name!r} is taken by /healthz itself")
        self._views[name] = view

    def add_metrics_text(self, text: MetricsText) -> None:
        """Append what ``text()`` writes to every /metrics answer (families the registry does not hold)."""
        self._texts.append(text)

    def on_start(self) -> None:
        """Start consumers and background work. Override in subclasses."""

    def on_stop(self) -> None:
        """Stop consumers and background work. Override in subclasses; the bus is closed afterwards."""

    def _healthz(self, response: Response) -> dict[str, Any]:
        results: dict[str, bool] = {}
        for name, check in self._checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a failing check means "not healthy", never a 500
                log.exception("health check %s raised", name)
                results[name] = False
        healthy = all(results.values())
        response.status_code = 200 if healthy else 503
        body: dict[str, Any] = {"status": "ok" if healthy else "degraded", "service": self.name, "checks": results,
                                "uptime_s": round(time.time() - self._started_at, 3)}
        for name, view in self._views.items():
            try:
                body[name] = dict(view())
            except Exception:  # a broken view loses its section, never the health answer
                log.exception("health view %s raised", name)
                body[name] = {"error": "unavailable"}
        return body

    def _metrics(self) -> Response:
        body = generate_latest(self.registry)
        if self._texts:
            body = b"".join([body, *(text() for text in self._texts)])
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def check_auth(self) -> None:
        """Refuse to start (AuthConfigError) with protected routes and no key, unless in development mode."""
        protected = [f"{m} {p}" for (m, p), role in route_roles(self.app).items() if role is not None]
        if not protected or not self.auth.open or self._auth_checked:
            return
        if not self.settings.development:
            raise AuthConfigError(
                f"{self.name} refuses to start: its API ({len(protected)} protected routes) needs the identity "
                f"provider's JWKS (ESPER_AUTH_JWKS); ESPER_DEVELOPMENT=true runs it open, for development only")
        log.warning("development mode: the API is open, every caller acts as an admin (set ESPER_AUTH_JWKS or "
                    "ESPER_AUTH_HS256_SECRET to verify tokens)")
        self._auth_checked = True

    @asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        self.check_auth()
        log.info("starting", extra={"bus_url": self.settings.bus_url, "port": self.settings.port,
                                    "auth": self.auth.mode})
        self.on_start()
        self.up.labels(self.name).set(1)
        try:
            yield
        finally:
            log.info("stopping")
            self.up.labels(self.name).set(0)
            self.on_stop()
            if self._bus is not None:
                self._bus.close()
            log.info("stopped")

    def uvicorn_config(self) -> Any:
        """How :meth:`run` serves the app: a ``uvicorn.Config`` on the settings' host and port.

        ``http`` and ``loop`` stay ``auto``, which picks httptools' C parser and uvloop (dependencies of
        this package) where they install, and falls back to h11 and asyncio where they do not.
        """
        import uvicorn

        return uvicorn.Config(self.app, host=self.settings.host, port=self.settings.port, log_config=None,
                              timeout_graceful_shutdown=int(self.settings.shutdown_timeout_s))

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT; uvicorn runs the lifespan shutdown, which stops and flushes cleanly."""
        import uvicorn

        configure_logging(self.name, self.settings.log_level, self.settings.log_format)
        self.check_auth()  # before the port opens, so a misconfigured service fails at once and says why
        configure_tracing(self.name, otlp_endpoint=self.settings.otlp_endpoint,
                          sample_ratio=self.settings.trace_sample_ratio)
        try:
            uvicorn.Server(self.uvicorn_config()).run()
        finally:
            shutdown_tracing()
