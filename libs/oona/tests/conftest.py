"""Fixtures for the Oona suites: one bus URL per backend, and buses isolated by a per-test topic prefix.

The ``pulsar`` parameter uses the root conftest's session fixture ``pulsar_url`` (a real standalone
broker, started or reused); ``OONA_TEST_PULSAR_URL`` points the suite at another running broker instead.
It is looked up lazily, so a run that deselects ``integration`` never starts a broker.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from esper_oona import Bus, connect

#: Short redelivery delay so nack tests take tenths of a second, not the production default.
TEST_NACK_DELAY_MS = 100


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration)])
def bus_url(request: pytest.FixtureRequest) -> str:
    """A bus URL for each backend; memory URLs name a broker of their own per test."""
    if request.param == "memory":
        return f"memory://conformance-{uuid.uuid4().hex[:12]}"
    return os.environ.get("OONA_TEST_PULSAR_URL") or request.getfixturevalue("pulsar_url")


BusFactory = Callable[..., Bus]


@pytest.fixture
def broker_acks_batch_indexes(bus_url: str, request: pytest.FixtureRequest) -> bool:
    """Whether the broker keeps per-message acks inside a batch (always true in memory).

    Pulsar needs ``acknowledgmentAtBatchIndexLevelEnabled=true``; without it a batch that is only partly
    acknowledged is redelivered whole. Read from the admin API (``OONA_TEST_PULSAR_ADMIN_URL`` with
    ``OONA_TEST_PULSAR_URL``, else the root ``pulsar_admin_url`` fixture).
    """
    if bus_url.startswith("memory://"):
        return True
    if os.environ.get("OONA_TEST_PULSAR_URL"):
        admin = os.environ.get("OONA_TEST_PULSAR_ADMIN_URL")
        if not admin:
            return True  # unknown: hold the broker to the strict expectation
    else:
        admin = request.getfixturevalue("pulsar_admin_url")
    with urllib.request.urlopen(f"{admin}/admin/v2/brokers/configuration/runtime", timeout=5) as response:
        runtime = json.load(response)
    return str(runtime.get("acknowledgmentAtBatchIndexLevelEnabled", "false")).lower() == "true"


@pytest.fixture
def make_bus(bus_url: str) -> Iterator[BusFactory]:
    """Connects buses that share one topic prefix (so they see each other and nothing else); closes them after."""
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    buses: list[Bus] = []

    def factory(producer_name: str = "test", **options: Any) -> Bus:
        options.setdefault("nack_delay_ms", TEST_NACK_DELAY_MS)
        options.setdefault("operation_timeout_s", 15)
        bus = connect(bus_url, producer_name=producer_name, topic_prefix=prefix, **options)
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        bus.close(timeout_s=2)
