"""Kernels from Urza over REST: a KernelSource + KernelSelector for Kasmina and Tamiyo.

``UrzaKernelSource`` speaks to Urza through the one torch-free client (``esper_urza_client.UrzaClient``)
and adds two caches in front of it:

* a :class:`KernelCache` of blobs (LRU, bounded in MB, sha256-checked on the way in and out), so a
  kernel evicted from memory or reloaded after a failure is not fetched again;
* a cache of *loaded* compiled kernels under the same MB budget. The loaded programs are immutable, so a
  hit hands out a clone sharing them, with its own copy of the artifact's initial weights (one flat
  tensor): microseconds, no hashing and no loader call. The cached kernel itself is never handed out, so
  its weights stay the artifact's. (Eager artifacts are always built fresh.)

Every blob fetched is checked against the sha256 Urza recorded for the artifact *and* the digest Urza
sent with the bytes. A mismatch is refused (KernelIntegrityError), logged, counted and passed to the
``on_integrity_error`` callbacks, so the caller can report the faulty artifact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import nn

from esper_contracts import (
    ArtifactId,
    BlueprintIR,
    CompilationPipeline,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    TensorInterface,
)
from esper_urza_client import UrzaClient

from .cache import KernelCache, sha256_hex
from .container import open_kernel_artifact
from .errors import KernelIntegrityError, KernelNotFoundError
from .interpreter import build_module
from .kernel import CompiledKernel, load_artifact, prewarm

log = logging.getLogger(__name__)


IntegrityCallback = Callable[[str, str], None]


def _parse(artifact_id: str) -> ArtifactId:
    """``artifact_id`` parsed; an id Urza cannot hold is a kernel that cannot be found."""
    try:
        return ArtifactId.parse(artifact_id)
    except ValueError as exc:
        raise KernelNotFoundError(str(exc)) from None


class UrzaKernelSource:
    """KernelSource (``load``/``metadata``) and KernelSelector (``query``) backed by Urza.

    Thread-safe: Kasmina loads from background threads. ``prewarm_loaders`` pays the loaders' one-time
    per-process cost on a background thread at construction, before the first seed is LOADING.
    ``pace_s``: how long a background load pauses between its phases (0 to never pause).
    """

    def __init__(self, base_url: str = "", *, cache_mb: float = 256.0, token: str | None = None,
                 timeout_s: float = 30.0, client: UrzaClient | None = None, prewarm_loaders: bool = True,
                 pace_s: float = 0.01) -> None:
        self.client = client if client is not None else UrzaClient(base_url, token=token, timeout_s=timeout_s)
        self.cache_mb = cache_mb
        self.pace_s = pace_s
        self.cache = KernelCache(cache_mb)
        self._capacity = self.cache.capacity_bytes
        self._loaded: OrderedDict[str, tuple[CompiledKernel, int]] = OrderedDict()
        self._loaded_bytes = 0
        self._meta: dict[str, CompiledKernelArtifact] = {}
        self._digests: dict[str, str] = {}  # digests verified when the bytes entered the cache
        self._irs: dict[str, BlueprintIR] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self.integrity_failures = 0
        self.on_integrity_error: list[IntegrityCallback] = []
        if prewarm_loaders:
            # Dynamo itself is imported here, on the caller's thread: a first import of it on two threads at once
            # (the prewarm thread, and the trainer building its optimizer) fails half-initialised. Its import is
            # paid by any optimizer anyway; the loaders' own imports then warm up in the background.
            import torch._dynamo  # noqa: F401

            threading.Thread(target=prewarm, name="esper-kernel-prewarm", daemon=True).start()

    # -- KernelSource -----------------------------------------------------------------------------------
    def metadata(self, artifact_id: str) -> CompiledKernelArtifact:
        """The artifact's current record from Urza (KernelNotFoundError when unknown)."""
        record = self.client.kernel(artifact_id)
        with self._lock:
            self._meta[artifact_id] = record.artifact
        return record.artifact

    def load(self, artifact_id: str) -> nn.Module:
        """A module for ``artifact_id``: a clone of an already-loaded compiled kernel, or fetch, verify and load.

        A cold load is one request: the binary, whose response carries the digest Urza recorded for it
        (checked against the record too when this source has seen the record). The pipeline is part of
        the artifact id, so no metadata round trip is needed to know how to load the bytes.
        """
        hit = self._loaded_hit(artifact_id)
        if hit is not None:
            return hit
        with self._lock:
            lock = self._load_locks.setdefault(artifact_id, threading.Lock())
        with lock:  # two seeds asking for one kernel share one fetch and one load
            hit = self._loaded_hit(artifact_id)
            if hit is not None:
                return hit
            data, sha256 = self._blob(artifact_id)
            if _parse(artifact_id).pipeline is CompilationPipeline.EAGER:
                return build_module(BlueprintIR.model_validate_json(data))
            self._pause()
            artifact = open_kernel_artifact(data, sha256, digest_checked=True)  # _blob verified these bytes
            self._pause()
            kernel = load_artifact(artifact, data, pause=self._pause)
            self._remember(artifact_id, kernel, len(data))
            self._pause()
            return kernel.clone()

    def _pause(self) -> None:
        # A background load pauses between its phases (fetch+verify, open, each native program, the copy
        # handed out: about a millisecond of CPU each), so one training step competes with one phase at
        # most instead of with the whole load.
        if self.pace_s > 0 and threading.current_thread() is not threading.main_thread():
            time.sleep(self.pace_s)

    def _loaded_hit(self, artifact_id: str) -> CompiledKernel | None:
        with self._lock:
            entry = self._loaded.get(artifact_id)
            if entry is None:
                return None
            self._loaded.move_to_end(artifact_id)
        return entry[0].clone()

    def _remember(self, artifact_id: str, kernel: CompiledKernel, size: int) -> None:
        if size > self._capacity:
            return
        with self._lock:
            old = self._loaded.pop(artifact_id, None)
            if old is not None:
                self._loaded_bytes -= old[1]
            while self._loaded and self._loaded_bytes + size > self._capacity:
                _aid, (_k, s) = self._loaded.popitem(last=False)
                self._loaded_bytes -= s
            self._loaded[artifact_id] = (kernel, size)
            self._loaded_bytes += size

    def _blob(self, artifact_id: str) -> tuple[bytes, str]:
        """The artifact's bytes and their verified sha256: from the cache, else from Urza."""
        with self._lock:
            meta = self._meta.get(artifact_id)
            known = meta.sha256 if meta is not None else self._digests.get(artifact_id)
        try:
            cached = self.cache.get(artifact_id, known)
        except KernelIntegrityError as exc:  # a corrupted cache entry was evicted: fetch it again
            log.warning("cached kernel bytes failed their check, refetching: %s", exc)
            cached = None
        if cached is not None:
            return cached, known or sha256_hex(cached)  # cached bytes always have a digest on record
        data, sent = self.client.binary(artifact_id)
        if not sent and known is None:  # an Urza that sends no digest: ask for the record
            known = self.metadata(artifact_id).sha256
        expected = known or sent
        try:
            if expected is None or (sent and known and sent != known):
                raise KernelIntegrityError("digest mismatch")
            self.cache.put(artifact_id, data, expected)  # hashes the bytes; nothing is kept on a mismatch
            with self._lock:
                self._digests[artifact_id] = expected
        except KernelIntegrityError:
            if known is None:  # the header was trusted without the record: read the record for the report
                try:
                    known = self.metadata(artifact_id).sha256
                except Exception:  # the refusal stands either way; only its message loses a detail
                    log.warning("could not read the record of %s for its digest", artifact_id, exc_info=True)
            self._integrity_failure(artifact_id, f"fetched bytes hash to {sha256_hex(data)}; Urza's record says "
                                                 f"{known or 'nothing (no digest recorded)'}, its response header "
                                                 f"says {sent or 'nothing'}")
        assert expected is not None
        return data, expected

    def _integrity_failure(self, artifact_id: str, reason: str) -> None:
        with self._lock:
            self.integrity_failures += 1
            self._meta.pop(artifact_id, None)
            self._digests.pop(artifact_id, None)
        log.error("kernel blob refused: %s", reason, extra={"artifact_id": artifact_id})
        for callback in list(self.on_integrity_error):
            try:
                callback(artifact_id, reason)
            except Exception:  # a failing reporter must not hide the integrity error itself
                log.exception("integrity callback failed")
        raise KernelIntegrityError(f"kernel artifact {artifact_id}: {reason}; refused")

    def evict(self, artifact_id: str, *, keep_bytes: bool = False) -> None:
        """Forget an artifact (after it failed at runtime): the next load fetches and verifies it again.

        ``keep_bytes`` drops only the loaded program (the next load re-verifies and reloads the cached bytes).
        """
        if not keep_bytes:
            self.cache.evict(artifact_id)
        with self._lock:
            entry = self._loaded.pop(artifact_id, None)
            if entry is not None:
                self._loaded_bytes -= entry[1]
            if not keep_bytes:
                self._meta.pop(artifact_id, None)
                self._digests.pop(artifact_id, None)

    def blueprint(self, artifact_id: str) -> BlueprintIR:
        """The BlueprintIR an artifact was compiled from (its id starts with the IR hash); cached: IRs never change.

        Tolaria names kernels in its logs and lineage with it.
        """
        blueprint_id = _parse(artifact_id).blueprint_id
        with self._lock:
            ir = self._irs.get(blueprint_id)
        if ir is None:
            ir = self.client.blueprint(blueprint_id).ir
            with self._lock:
                self._irs[blueprint_id] = ir
        return ir

    def describe(self, artifact_id: str) -> str:
        """The name of the blueprint the artifact was compiled from, for logs and lineage; the id itself when
        Urza cannot tell (unreachable, or no such blueprint)."""
        try:
            return self.blueprint(artifact_id).name
        except Exception as exc:  # a name is only for display: it must never stop a training run
            log.debug("no blueprint name for %s: %s", artifact_id, exc)
            return artifact_id

    def register_interface(self, interface: TensorInterface) -> list[str]:
        """Nothing to prepare: Urza's kernels are compiled by Tezzeret, not built here per interface."""
        return []

    # -- KernelSelector ---------------------------------------------------------------------------------
    def query(self, q: KernelQuery) -> KernelQueryResult:
        """Urza's answer to ``q`` (POST /api/v1/kernels/query); artifacts' records are remembered for load."""
        result = self.client.query(q)
        with self._lock:
            for artifact in result.artifacts:
                self._meta[artifact.artifact_id] = artifact
        return result

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    # A source is a shared service handle: copying a model that references it must not copy it.
    def __deepcopy__(self, memo: dict[int, Any]) -> UrzaKernelSource:
        return self
