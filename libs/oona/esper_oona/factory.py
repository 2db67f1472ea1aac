"""``connect``: the one way to obtain a bus; the URL's scheme picks the backend."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from .bus import DEFAULT_MAX_MESSAGE_BYTES, Bus, BusOptions


def _connect_memory(url: str, options: BusOptions) -> Bus:
    from .memory_bus import MemoryBus, memory_broker_created

    parts = urlsplit(url)
    # memory://<name>: the name selects a process-wide broker, so buses with one URL talk to each other.
    broker, created = memory_broker_created(parts.netloc + parts.path)
    return MemoryBus(broker, options, new_broker=created)


def _connect_pulsar(url: str, options: BusOptions) -> Bus:
    # Imported on use: memory-only processes (unit tests, standalone mode) never load the native client.
    from .pulsar_bus import PulsarBus

    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"pulsar URL needs a host, e.g. pulsar://127.0.0.1:6650; got {url!r}")
    return PulsarBus(f"pulsar://{parts.netloc}", options)


#: URL scheme -> backend constructor.
BACKENDS: dict[str, Callable[[str, BusOptions], Bus]] = {
    "memory": _connect_memory,
    "pulsar": _connect_pulsar,
}


def connect(
    url: str,
    *,
    producer_name: str,
    topic_prefix: str = "",
    max_redeliveries: int = 3,
    nack_delay_ms: int = 1000,
    namespace: str = "public/default",
    batching_max_publish_delay_ms: int = 1,
    batching_max_messages: int = 1000,
    max_pending_messages: int = 10000,
    send_timeout_ms: int = 30000,
    operation_timeout_s: int = 30,
    receiver_queue_size: int = 1000,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Bus:
    """A bus for ``url``: ``memory://[name]`` (in-process) or ``pulsar://host:port``.

    ``producer_name`` is written into every envelope this bus publishes. ``topic_prefix`` isolates
    tests or environments sharing a broker. ``max_redeliveries`` and ``nack_delay_ms`` are the
    subscription defaults. The remaining settings tune Pulsar and are ignored by ``memory://``, so the
    same call works for both. ``max_message_bytes`` bounds every message both ways: a larger publish is
    refused, a larger delivery is dead-lettered. Raises ValueError for any other scheme.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    backend = BACKENDS.get(scheme)
    if backend is None:
        supported = ", ".join(f"{name}://" for name in BACKENDS)
        raise ValueError(f"unsupported bus URL {url!r}: the scheme must be one of {supported}")
    options = BusOptions(
        producer_name=producer_name,
        topic_prefix=topic_prefix,
        max_redeliveries=max_redeliveries,
        nack_delay_ms=nack_delay_ms,
        namespace=namespace,
        batching_max_publish_delay_ms=batching_max_publish_delay_ms,
        batching_max_messages=batching_max_messages,
        max_pending_messages=max_pending_messages,
        send_timeout_ms=send_timeout_ms,
        operation_timeout_s=operation_timeout_s,
        receiver_queue_size=receiver_queue_size,
        max_message_bytes=max_message_bytes,
    )
    return backend(url, options)
