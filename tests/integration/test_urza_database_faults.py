"""Urza with its PostgreSQL down or stalled: requests and /healthz answer 503 with the reason, within seconds.

The database is reached through a TCP relay that this test owns, so the shared server is never touched:
closing the relay is "PostgreSQL down", holding its bytes is "PostgreSQL stalled".
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from esper_oona.memory_bus import drop_memory_broker
from esper_urza.service import create_service

pytestmark = pytest.mark.integration


class Relay:
    """A TCP relay to one upstream address: forwards, refuses (down) or holds every byte (stalled)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stalled = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.stalled.is_set():
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def down(self) -> None:
        """Refuse new connections and drop the open ones."""
        for s in [self.listener, *self.sockets]:  # shutdown, not close, wakes the thread blocked in accept()
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture
def relayed(postgres_database_url: str) -> Iterator[tuple[str, Relay]]:
    url = make_url(postgres_database_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    yield url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False), relay
    relay.down()


@pytest.fixture
def urza_client(relayed: tuple[str, Relay], tmp_path: Any) -> Iterator[tuple[TestClient, Relay]]:
    database_url, relay = relayed
    bus = f"memory://urza-db-{uuid.uuid4().hex[:8]}"
    urza = create_service(database_url=database_url, data_dir=tmp_path, bus_url=bus, seed_library=False,
                          outbox_interval_s=0.1)
    with TestClient(urza.app, raise_server_exceptions=False) as client:
        yield client, relay
    drop_memory_broker(bus.removeprefix("memory://"))


def test_postgresql_down_is_503_with_the_reason(urza_client: tuple[TestClient, Relay]) -> None:
    client, relay = urza_client
    assert client.get("/api/v1/blueprints").status_code == 200
    relay.down()
    started = time.monotonic()
    response = client.get("/api/v1/blueprints")
    assert response.status_code == 503, response.text
    assert response.json()["detail"].startswith("database unavailable: ")
    assert "internal error" not in response.json()["detail"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["checks"]["database"] is False
    assert time.monotonic() - started < 30


def test_postgresql_stalled_answers_503_instead_of_hanging(urza_client: tuple[TestClient, Relay],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from esper_storage.sql import engine

    monkeypatch.setattr(engine, "PG_CLIENT_TIMEOUT_S", 2.0)
    client, relay = urza_client
    assert client.get("/api/v1/blueprints").status_code == 200  # a pooled connection exists
    relay.stalled.set()
    try:
        started = time.monotonic()
        response = client.get("/api/v1/blueprints")
        assert response.status_code == 503, response.text
        assert "database unavailable" in response.json()["detail"]
        health = client.get("/healthz")
        assert health.status_code == 503
        assert time.monotonic() - started < 25
    finally:
        relay.stalled.clear()
    assert client.get("/api/v1/blueprints").status_code == 200  # it recovers once the server answers
