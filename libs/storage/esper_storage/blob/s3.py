"""The ``s3://bucket/prefix`` blob backend (boto3, path-style addressing, any S3-compatible server).

URL form: ``s3://[ACCESS_KEY:SECRET@]bucket[/prefix]?endpoint_url=http://host:port&region=us-east-1``.
Credentials come from the URL (userinfo, or ``access_key_id``/``secret_access_key`` query parameters)
or else from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, roles).
``create_bucket=false`` turns off creating a missing bucket at start.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .base import CHUNK_SIZE, BlobConflictError, BlobNotFoundError, BlobStoreURLError, check_key, sha256_hex

# The object metadata entry holding the sha256 of the bytes (S3 stores it as x-amz-meta-sha256).
_SHA_META = "sha256"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
# Answers of a server that saw our If-None-Match and found the key already taken.
_PRECONDITION = {"412", "PreconditionFailed", "409", "ConditionalRequestConflict"}
_QUERY_KEYS = {"endpoint_url", "region", "access_key_id", "secret_access_key", "create_bucket"}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _BodyReader(io.RawIOBase):
    """Adapts botocore's StreamingBody to the io stack so callers get an ordinary buffered binary file."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3BlobStore:
    """Blobs as S3 objects ``<prefix><key>`` in one bucket, each carrying its sha256 as metadata."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        create_bucket: bool = True,
    ) -> None:
        if not bucket:
            raise BlobStoreURLError("an S3 blob store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.url = f"s3://{bucket}/{self.prefix}"
        # Path-style addressing: S3-compatible servers on 127.0.0.1 have no per-bucket DNS names.
        # Checksums only when required: not every S3-compatible server understands the newer CRC headers.
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )
        self._conditional_put = True  # switched off if the server rejects If-None-Match
        if create_bucket:
            self._ensure_bucket()

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """Open a store from an ``s3://`` URL (see the module docstring for the form)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname:
            raise BlobStoreURLError(f"an S3 blob store URL looks like s3://bucket/prefix?endpoint_url=..., got {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - _QUERY_KEYS)
        if unknown:
            raise BlobStoreURLError(f"unknown S3 URL parameter(s) {unknown}; known: {sorted(_QUERY_KEYS)}")
        return cls(
            parts.hostname,
            unquote(parts.path),
            endpoint_url=query.get("endpoint_url") or None,
            region=query.get("region") or None,
            access_key_id=unquote(parts.username) if parts.username else query.get("access_key_id") or None,
            secret_access_key=unquote(parts.password) if parts.password else query.get("secret_access_key") or None,
            create_bucket=query.get("create_bucket", "true").lower() not in ("0", "false", "no"),
        )

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NOT_FOUND:
                raise
        try:
            # us-east-1 is the one region that must not be named as a location constraint.
            extra: dict[str, Any] = {} if self.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": self.region}}
            self._client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:  # a concurrent starter created it first
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _object(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.head_object(Bucket=self.bucket, Key=self._object(key)))
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                return None
            raise

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key``; identical bytes again are a no-op, different bytes raise BlobConflictError."""
        new_sha = sha256_hex(data)
        if self._head(key) is not None:
            return self._same_or_conflict(key, new_sha)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": self._object(key), "Body": data,
                                "Metadata": {_SHA_META: new_sha}, "ContentType": "application/octet-stream"}
        if self._conditional_put:
            # If-None-Match: * makes the write create-only on the server, closing the race between the
            # check above and this write when two writers upload the same key at once.
            try:
                self._client.put_object(**args, IfNoneMatch="*")
                return new_sha
            except ClientError as exc:
                code = _error_code(exc)
                if code in _PRECONDITION:
                    return self._same_or_conflict(key, new_sha)
                if code not in ("NotImplemented", "501", "InvalidArgument"):
                    raise
                self._conditional_put = False
        self._client.put_object(**args)
        return new_sha

    def _same_or_conflict(self, key: str, new_sha: str) -> str:
        existing = self.sha256(key)
        if existing != new_sha:
            raise BlobConflictError(key, existing, new_sha)
        return existing

    def _get_body(self, key: str) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._object(key))["Body"]
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND:
                raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}") from None
            raise

    def get(self, key: str) -> bytes:
        """All bytes under ``key``."""
        body = self._get_body(key)
        try:
            data: bytes = body.read()
            return data
        finally:
            body.close()

    def open(self, key: str) -> IO[bytes]:
        """The object as a buffered binary stream read from S3 in pieces."""
        return io.BufferedReader(_BodyReader(self._get_body(key)), CHUNK_SIZE)

    def exists(self, key: str) -> bool:
        """True if an object is stored under ``key``."""
        return self._head(key) is not None

    def size(self, key: str) -> int:
        """The object's length in bytes."""
        head = self._head(key)
        if head is None:
            raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}")
        return int(head["ContentLength"])

    def sha256(self, key: str) -> str:
        """The sha256 from the object's metadata (computed by reading it when the metadata is absent)."""
        head = self._head(key)
        if head is None:
            raise BlobNotFoundError(f"no blob under key {key!r} in {self.url}")
        recorded = head.get("Metadata", {}).get(_SHA_META)
        if recorded:
            return str(recorded)
        digest = hashlib.sha256()
        with self.open(key) as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
        return digest.hexdigest()

    def uri(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self._object(key)}"

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A signed GET URL valid for ``expires_s`` seconds (the key is not checked for existence)."""
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object(key)}, ExpiresIn=expires_s
        )
        return url

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r}, endpoint_url={self.endpoint_url!r})"
