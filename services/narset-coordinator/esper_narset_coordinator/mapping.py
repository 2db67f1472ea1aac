"""Which Narset worker looks after which region: assignment, quotas, heartbeats and crash recovery.

A *worker* is a slot in the pool (its objects live in the trainer process); the coordinator only keeps
the books. Placing a region:

1. a region already owned by a live worker stays where it is (its seed count is refreshed);
2. otherwise it goes to the least-loaded live worker whose quota still fits it (ties: lowest worker id);
3. if none fits and the pool is below ``max_workers``, a new worker is spawned for it;
4. if the pool is full, the least-loaded worker takes it over quota (reported, never refused: an
   unwatched region would be worse than a busy worker).

A worker with regions that has not sent a heartbeat for ``heartbeat_timeout_s`` is declared dead and its regions
are placed again by the same rules, biggest first. Nothing strategic depends on this: allocations,
proposals and Tamiyo's decisions are keyed by region, never by worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PoolLimits:
    """Size of the pool and what one worker may carry."""

    min_workers: int = 1
    max_workers: int = 100
    seeds_per_worker: int = 100
    regions_per_worker: int = 20
    heartbeat_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 1 <= min_workers <= max_workers, got {self.min_workers}, {self.max_workers}")
        if self.seeds_per_worker < 1 or self.regions_per_worker < 1 or self.heartbeat_timeout_s <= 0:
            raise ValueError(f"quotas and the heartbeat timeout must be positive: {self}")


@dataclass
class WorkerSlot:
    """The coordinator's view of one worker."""

    worker_id: str
    last_seen: float
    regions: dict[str, int] = field(default_factory=dict)  # region -> seed count

    @property
    def load(self) -> int:
        """Seeds this worker looks after."""
        return sum(self.regions.values())

    def fits(self, seeds: int, limits: PoolLimits) -> bool:
        """Whether one more region of ``seeds`` seeds stays within the worker's quota."""
        return self.load + seeds <= limits.seeds_per_worker and len(self.regions) < limits.regions_per_worker


@dataclass(frozen=True)
class Move:
    """A region that changed hands (``previous`` is None for a first placement)."""

    region_id: str
    previous: str | None
    worker_id: str
    spawned: bool
    over_quota: bool


class RegionMap:
    """The region -> worker map with the pool's lifecycle."""

    def __init__(self, limits: PoolLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or PoolLimits()
        self.clock = clock
        self.workers: dict[str, WorkerSlot] = {}
        self.owner: dict[str, str] = {}
        self.dead: list[str] = []
        self.generation = 0  # bumped on every change, so a host can tell a stale map from a fresh one
        self._spawned = 0
        for _ in range(self.limits.min_workers):
            self._spawn()

    # ------------------------------------------------------------------------------------------ placing

    def assign(self, region_id: str, seed_count: int) -> Move:
        """Place (or refresh) one region and say where it went."""
        current = self.owner.get(region_id)
        if current is not None:
            self.workers[current].regions[region_id] = seed_count
            return Move(region_id, current, current, spawned=False, over_quota=False)
        return self._place(region_id, seed_count, previous=None)

    def _place(self, region_id: str, seed_count: int, previous: str | None) -> Move:
        fitting = [w for w in self.workers.values() if w.fits(seed_count, self.limits)]
        spawned = over_quota = False
        if fitting:
            target = min(fitting, key=lambda w: (w.load, w.worker_id))
        elif len(self.workers) < self.limits.max_workers:
            target, spawned = self._spawn(), True
        else:
            target, over_quota = min(self.workers.values(), key=lambda w: (w.load, w.worker_id)), True
        target.regions[region_id] = seed_count
        target.last_seen = self.clock()  # new work starts a fresh timeout: its host has not had time to beat
        self.owner[region_id] = target.worker_id
        self.generation += 1
        return Move(region_id, previous, target.worker_id, spawned, over_quota)

    def _spawn(self) -> WorkerSlot:
        worker_id = f"worker-{self._spawned:03d}"
        self._spawned += 1
        slot = self.workers[worker_id] = WorkerSlot(worker_id, last_seen=self.clock())
        self.generation += 1
        return slot

    def release(self, region_id: str) -> None:
        """Forget a region (its layer left the model)."""
        worker_id = self.owner.pop(region_id, None)
        if worker_id is not None:
            self.workers[worker_id].regions.pop(region_id, None)
            self.generation += 1

    # ------------------------------------------------------------------------------------------ liveness

    def heartbeat(self, worker_id: str) -> bool:
        """Record a sign of life; False for a worker the coordinator does not know (or declared dead)."""
        slot = self.workers.get(worker_id)
        if slot is None:
            return False
        slot.last_seen = self.clock()
        return True

    def reap(self) -> list[Move]:
        """Declare silent workers dead and place their regions elsewhere; returns the moves.

        An idle slot (no regions) is never reaped: nobody is there to send heartbeats yet, and nothing is lost.
        """
        deadline = self.clock() - self.limits.heartbeat_timeout_s
        silent = sorted(w.worker_id for w in self.workers.values() if w.last_seen < deadline and w.regions)
        moves: list[Move] = []
        for worker_id in silent:
            moves.extend(self.crashed(worker_id))
        return moves

    def crashed(self, worker_id: str) -> list[Move]:
        """Remove a worker at once (its host saw it fail) and place its regions elsewhere, biggest first."""
        slot = self.workers.pop(worker_id, None)
        if slot is None:
            return []
        self.dead.append(worker_id)
        self.generation += 1
        orphans = sorted(slot.regions.items(), key=lambda item: (-item[1], item[0]))
        for region_id, _seeds in orphans:
            del self.owner[region_id]
        if not self.workers:
            self._spawn()  # the pool never drops below one worker
        return [self._place(region_id, seeds, previous=worker_id) for region_id, seeds in orphans]

    # ------------------------------------------------------------------------------------------ views

    def assignments(self) -> dict[str, list[str]]:
        """worker id -> its regions (sorted), for every live worker."""
        return {w.worker_id: sorted(w.regions) for w in sorted(self.workers.values(), key=lambda w: w.worker_id)}

    def loads(self) -> dict[str, int]:
        """worker id -> seeds it looks after."""
        return {w.worker_id: w.load for w in self.workers.values()}
