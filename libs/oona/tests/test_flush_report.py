"""What ``flush`` reports on Pulsar: refused messages as lost, unacknowledged ones as unknown, never the reverse."""

from __future__ import annotations

from typing import Any

import pulsar
import pytest

from esper_oona import PublishError, PublishUnconfirmed, connect


def _bus() -> Any:
    # No broker is contacted: the client connects lazily and no producer exists, so only the report is tested.
    return connect("pulsar://127.0.0.1:1", producer_name="flush-report")


def test_a_send_timeout_is_reported_as_unconfirmed_not_as_lost() -> None:
    bus = _bus()
    try:
        for result in (pulsar.Result.Ok, pulsar.Result.Timeout, pulsar.Result.Timeout, pulsar.Result.Ok):
            bus._on_sent(result, None)  # as the client's I/O thread calls it
        with pytest.raises(PublishUnconfirmed) as exc:
            bus.flush()
        assert exc.value.unconfirmed == 2
        assert "2 message(s) were not acknowledged" in str(exc.value) and "may or may not" in str(exc.value)
        assert "not persisted" not in str(exc.value)
        bus.flush()  # reported once: the next flush has nothing to say
    finally:
        bus.close()


def test_a_refusal_is_reported_as_lost_with_the_unconfirmed_count() -> None:
    bus = _bus()
    try:
        bus._on_sent(pulsar.Result.ProducerQueueIsFull, None)
        bus._on_sent(pulsar.Result.Timeout, None)
        with pytest.raises(PublishError) as exc:
            bus.flush()
        assert not isinstance(exc.value, PublishUnconfirmed)
        assert "1 message(s) were refused by the broker" in str(exc.value) and "1 more unconfirmed" in str(exc.value)
    finally:
        bus.close()
