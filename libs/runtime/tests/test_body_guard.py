"""Every service refuses bodies over its limit (413) and bodies that stop arriving (408) instead of hanging."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import Body
from fastapi.testclient import TestClient

from esper_runtime import Service, ServiceSettings


def _service(**settings: Any) -> Service:
    service = Service(ServiceSettings(service_name="guarded", **settings))

    @service.app.post("/echo")
    def echo(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        return body

    return service


@pytest.fixture
def served() -> Iterator[tuple[str, int]]:
    """A service on a real socket (the short body needs a real connection), 0.5 s body read timeout."""
    service = _service(body_read_timeout_s=0.5)
    server = uvicorn.Server(uvicorn.Config(service.app, host="127.0.0.1", port=0, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_body_shorter_than_its_content_length_is_answered_408(served: tuple[str, int]) -> None:
    started = time.monotonic()
    with socket.create_connection(served, timeout=10) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"a\": 1")
        answer = conn.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "stopped arriving: 7 byte(s) in 0.5 s of the 100 declared" in answer
    assert time.monotonic() - started < 5


def test_a_whole_body_still_goes_through(served: tuple[str, int]) -> None:
    with socket.create_connection(served, timeout=10) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 8\r\n\r\n{\"a\": 1}")
        answer = conn.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 200") and answer.endswith('{"a":1}')


def test_a_body_over_the_limit_is_413_declared_or_streamed() -> None:
    with TestClient(_service(max_body_bytes=2048).app) as client:
        declared = client.post("/echo", json={"x": "y" * 4096})
        assert declared.status_code == 413 and "exceeds the limit of 2048 bytes" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
            yield b'{"x": "'
            yield b"y" * 4096
            yield b'"}'

        streamed = client.post("/echo", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/echo", json={"x": "y"}).json() == {"x": "y"}
