"""The transactional outbox: messages written in the same transaction as the change that causes them.

A job is inserted into ``outbox`` together with the blueprint or status change it belongs to, and
published after the commit. A crash between the two leaves the row unpublished, and the next dispatch
sends it: no job is lost, and the ``dedupe_key`` keeps a redelivered cause from queueing it twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, func, select, update

from esper_storage import insert_ignore

from .models import outbox


def enqueue(conn: Connection, dedupe_key: str, topic: str, payload: BaseModel, key: str | None,
            now: datetime) -> bool:
    """Queue ``payload`` for ``topic`` unless a message with ``dedupe_key`` was queued before."""
    return insert_ignore(conn, outbox, {
        "dedupe_key": dedupe_key, "topic": topic, "message_key": key, "payload_json": payload.model_dump_json(),
        "created_at": now, "attempts": 0,
    }, ["dedupe_key"]) == 1


def pending(conn: Connection, limit: int) -> list[Any]:
    """Unpublished messages, oldest first; on PostgreSQL locked so that two dispatchers never share one."""
    stmt = select(outbox).where(outbox.c.published_at.is_(None)).order_by(outbox.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(conn.execute(stmt))


def mark_published(conn: Connection, ids: list[int], now: datetime) -> None:
    """Record that these messages reached the bus."""
    if ids:
        conn.execute(update(outbox).where(outbox.c.id.in_(ids))
                     .values(published_at=now, attempts=outbox.c.attempts + 1, last_error=None))


def mark_failed(conn: Connection, message_id: int, error: str) -> None:
    """Record a failed attempt; the message stays pending."""
    conn.execute(update(outbox).where(outbox.c.id == message_id)
                 .values(attempts=outbox.c.attempts + 1, last_error=error[:2000]))


def mark_dropped(conn: Connection, message_id: int, error: str, now: datetime) -> None:
    """Take a message that can never be sent out of the queue, keeping the reason on the row."""
    conn.execute(update(outbox).where(outbox.c.id == message_id)
                 .values(published_at=now, attempts=outbox.c.attempts + 1, last_error=f"dropped: {error}"[:2000]))


def backlog(conn: Connection) -> int:
    """How many messages wait to be published."""
    return int(conn.execute(select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None)))
               .scalar_one())


def queued(conn: Connection, topic: str, key_prefix: str) -> list[Any]:
    """Messages on ``topic`` whose dedupe key starts with ``key_prefix`` (for job listings)."""
    return list(conn.execute(select(outbox).where(outbox.c.topic == topic,
                                                  outbox.c.dedupe_key.startswith(key_prefix, autoescape=True))
                             .order_by(outbox.c.id)))


def requeue_published(conn: Connection, topics: list[str]) -> int:
    """Mark every message published on ``topics`` as pending again (not the dropped ones); returns how many.

    For a bus that does not outlive its process (``memory://``): what an earlier run published died with
    it. Jobs carry stable ids and workers recognise repeats, so sending them again is safe.
    """
    result = conn.execute(update(outbox).where(outbox.c.topic.in_(topics), outbox.c.published_at.is_not(None),
                                               ~outbox.c.last_error.startswith("dropped:", autoescape=True)
                                               | outbox.c.last_error.is_(None))
                          .values(published_at=None))
    return int(result.rowcount or 0)
