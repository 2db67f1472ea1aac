"""Tracing is off unless an OTLP endpoint is configured; configured, spans reach that endpoint over OTLP/HTTP.

Each case runs in a fresh interpreter: OpenTelemetry allows one tracer provider per process, and the test
process may already hold one (the in-memory exporter of tests/test_tracing.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

from esper_runtime import ServiceSettings


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_tracing_is_off_by_default() -> None:
    assert ServiceSettings.model_fields["otlp_endpoint"].default is None
    result = _run("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from esper_runtime.tracing import configure_tracing
        assert configure_tracing("urza") is None
        assert not isinstance(trace.get_tracer_provider(), TracerProvider)
        with trace.get_tracer("t").start_as_current_span("nothing") as span:
            assert not span.get_span_context().is_valid  # a no-op span: nothing recorded, nothing sent
        print("off")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "off", result.stderr


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Collector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_configured_endpoint_receives_the_spans_over_otlp_http() -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        result = _run(f"""
            from opentelemetry import trace
            from esper_runtime.tracing import configure_tracing, shutdown_tracing
            assert configure_tracing("tamiyo", otlp_endpoint={url!r}) is not None
            with trace.get_tracer("t").start_as_current_span("tamiyo.decide"):
                pass
            shutdown_tracing()  # exports what the batch processor holds
        """)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert [path for path, _ in _Collector.received] == ["/v1/traces"]
    body = _Collector.received[0][1]
    assert b"tamiyo.decide" in body and b"tamiyo" in body  # the span and its service.name, protobuf-encoded
