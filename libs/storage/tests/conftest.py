"""Backends for the storage conformance suites: embedded ones always, real PostgreSQL and S3 when marked.

The production parameters use the root conftest's session fixtures (``postgres_url``, ``s3_config``),
which start or reuse real servers on 127.0.0.1. They are looked up lazily, so a run that deselects
``integration`` never starts a server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def s3_url(config: Any, prefix: str) -> str:
    """An ``s3://`` URL for the root fixture's server, under a prefix of our own."""
    from urllib.parse import urlencode

    def pick(*names: str) -> Any:
        for name in names:
            value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
            if value:
                return value
        return None

    query = {
        "endpoint_url": pick("endpoint_url", "endpoint"),
        "access_key_id": pick("access_key_id", "aws_access_key_id", "access_key"),
        "secret_access_key": pick("secret_access_key", "aws_secret_access_key", "secret_key"),
        "region": pick("region", "region_name") or "us-east-1",
    }
    bucket = pick("bucket", "bucket_name") or "esper-test"
    return f"s3://{bucket}/{prefix}?" + urlencode({k: v for k, v in query.items() if v})


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty blob store URL for each backend."""
    if request.param == "file":
        return (tmp_path / "blobs").as_uri()
    return s3_url(request.getfixturevalue("s3_config"), f"conformance-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL for each backend (a throwaway database on the PostgreSQL server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'conformance.db'}"
        return
    yield request.getfixturevalue("postgres_database_url")  # a throwaway database (root conftest)
