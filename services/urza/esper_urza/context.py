"""What Urza's domain objects share: the database, the blob store, the settings and the outbox hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from esper_contracts import utc_now
from esper_storage import BlobStore, Database

from .settings import UrzaSettings


def _nothing() -> None:
    return None


@dataclass
class UrzaContext:
    """Dependencies of the catalog and the ledger. ``after_commit`` sends queued jobs (the outbox dispatcher)."""

    db: Database
    blobs: BlobStore
    settings: UrzaSettings
    after_commit: Callable[[], None] = field(default=_nothing)
    clock: Callable[[], datetime] = field(default=utc_now)
