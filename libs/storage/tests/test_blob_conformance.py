"""One conformance suite for every blob store backend: file:// always, s3:// against a real S3 server."""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.request

import pytest

from esper_storage import (
    BlobConflictError,
    BlobNotFoundError,
    BlobStore,
    BlobStoreURLError,
    InvalidBlobKeyError,
    content_key,
    open_blob_store,
)


@pytest.fixture
def store(blob_url: str) -> BlobStore:
    s = open_blob_store(blob_url)
    yield s
    s.close()


def test_put_get_roundtrip_returns_sha256(store: BlobStore) -> None:
    data = b"kernel bytes \x00\x01\x02"
    sha = store.put("kernels/a.bin", data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.get("kernels/a.bin") == data
    assert store.exists("kernels/a.bin")
    assert store.size("kernels/a.bin") == len(data)
    assert store.sha256("kernels/a.bin") == sha
    assert isinstance(store, BlobStore)


def test_missing_key_raises_not_found(store: BlobStore) -> None:
    assert not store.exists("nope/missing")
    for call in (store.get, store.open, store.size, store.sha256):
        with pytest.raises(BlobNotFoundError, match="missing"):
            call("nope/missing")
    with pytest.raises(KeyError):  # also a KeyError, for callers treating the store as a mapping
        store.get("nope/missing")


def test_same_bytes_twice_is_idempotent(store: BlobStore) -> None:
    first = store.put("same", b"abc")
    assert store.put("same", b"abc") == first
    assert store.get("same") == b"abc"


def test_different_bytes_under_existing_key_raise_and_keep_the_original(store: BlobStore) -> None:
    store.put("immutable", b"original")
    with pytest.raises(BlobConflictError) as info:
        store.put("immutable", b"changed")
    assert info.value.existing_sha256 == hashlib.sha256(b"original").hexdigest()
    assert "refusing to overwrite" in str(info.value)
    assert store.get("immutable") == b"original"


def test_empty_blob(store: BlobStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    assert store.size("empty") == 0


def test_large_blob_streams_in_pieces(store: BlobStore) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    key = content_key(hashlib.sha256(data).hexdigest())
    store.put(key, data)
    pieces = []
    with store.open(key) as f:
        while chunk := f.read(1 << 20):
            pieces.append(chunk)
    assert len(pieces) == 4
    assert b"".join(pieces) == data


@pytest.mark.parametrize("key", ["", "/abs", "../escape", "a/../b", "a//b", "a/./b", "sp ace", "x" * 600, ".hidden"])
def test_unsafe_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidBlobKeyError):
        store.put(key, b"x")


def test_content_key_layout() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert content_key(sha) == f"sha256/{sha[:2]}/{sha}"
    assert content_key(sha, prefix="kernels") == f"kernels/{sha[:2]}/{sha}"
    with pytest.raises(InvalidBlobKeyError):
        content_key("not-a-digest")


def test_racing_writers_of_the_same_bytes_all_succeed(store: BlobStore) -> None:
    data = os.urandom(64 * 1024)
    results: list[str] = []
    errors: list[BaseException] = []

    def write() -> None:
        try:
            results.append(store.put("race/same", data))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(results) == {hashlib.sha256(data).hexdigest()}
    assert store.get("race/same") == data


def test_racing_writers_of_different_bytes_leave_exactly_one_winner(store: BlobStore) -> None:
    payloads = [os.urandom(32 * 1024) for _ in range(6)]
    won: list[bytes] = []
    conflicts: list[BlobConflictError] = []
    barrier = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        barrier.wait()
        try:
            store.put("race/diff", data)
            won.append(data)
        except BlobConflictError as exc:
            conflicts.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, f"{len(won)} writers believe they stored the key"
    assert len(conflicts) == len(payloads) - 1
    assert store.get("race/diff") == won[0]


def test_reopening_the_url_sees_the_same_blobs(blob_url: str) -> None:
    first = open_blob_store(blob_url)
    first.put("persist/me", b"still here")
    first.close()
    second = open_blob_store(blob_url)
    try:
        assert second.get("persist/me") == b"still here"
    finally:
        second.close()


def test_uri_names_the_backend(store: BlobStore, blob_url: str) -> None:
    store.put("where/am/i", b"1")
    uri = store.uri("where/am/i")
    assert uri.split(":", 1)[0] == blob_url.split(":", 1)[0]
    assert uri.endswith("where/am/i")


def test_presigned_url_serves_the_bytes_or_is_absent(store: BlobStore, blob_url: str) -> None:
    store.put("signed/blob", b"signed bytes")
    url = store.presigned_url("signed/blob", expires_s=60)
    if blob_url.startswith("file:"):
        assert url is None
        return
    assert url is not None
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"signed bytes"


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(BlobStoreURLError, match=r"file://.*s3://"):
        open_blob_store("ftp://somewhere/blobs")


def test_malformed_file_url_is_refused() -> None:
    with pytest.raises(BlobStoreURLError):
        open_blob_store("file://remote-host/dir")
