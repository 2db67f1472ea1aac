"""Protected zones: where pruning (and any other surgery) must stay out, and when it may come back.

Two kinds of zone:

* **Scaffold zones.** When Tamiyo accepts a scaffold request, the scaffold's region and an *embargo ring*
  of ``ring_radius`` neighbouring regions on each side (in model order) are protected. The scaffold sunsets
  when its TTL runs out or when its seed leaves the live stages; the zone then stays until one clean
  checkpoint has passed *after* the sunset, and is re-published with ``expires_after_epoch`` set to it.
* **Volatile zones.** A domain whose volatility (Tamiyo-Prime's gradient-spike term) reaches
  ``volatile_enter`` is protected; it is released at the first clean checkpoint after the volatility
  has fallen to ``volatile_exit`` (hysteresis, so a wobbling domain does not open and close zones).

Zone ids are derived from what they protect, so republishing a zone updates it rather than adding one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from esper_contracts import ProtectedZone, ScaffoldRequest


@dataclass
class _Scaffold:
    request: ScaffoldRequest
    started_epoch: int
    zone: ProtectedZone
    seen_live: bool = False
    sunset_epoch: int | None = None


@dataclass
class _Volatile:
    zone: ProtectedZone
    calm_since: int | None = None


class ProtectedZones:
    """Opens, tracks and lifts protected zones."""

    def __init__(self, ring_radius: int = 1, volatile_enter: float = 0.6, volatile_exit: float = 0.3) -> None:
        if ring_radius < 0 or not 0 <= volatile_exit < volatile_enter <= 1:
            raise ValueError(f"need ring_radius >= 0 and 0 <= volatile_exit < volatile_enter <= 1, got "
                             f"{ring_radius}, {volatile_exit}, {volatile_enter}")
        self.ring_radius = ring_radius
        self.volatile_enter = volatile_enter
        self.volatile_exit = volatile_exit
        self._scaffolds: dict[str, _Scaffold] = {}
        self._volatile: dict[str, _Volatile] = {}
        self._lifted: list[ProtectedZone] = []

    # ------------------------------------------------------------------------------------------ opening

    def open_scaffold_zone(self, request: ScaffoldRequest, epoch: int, ordered_regions: Sequence[str]) -> ProtectedZone:
        """Protect the scaffold's region and its embargo ring; idempotent for a repeated request."""
        known = self._scaffolds.get(request.request_id)
        if known is not None:
            return known.zone
        ring = _ring(request.region_id, ordered_regions, self.ring_radius)
        zone = ProtectedZone(
            zone_id=f"scaffold-{request.request_id}",
            module_patterns=ring,
            reason=f"scaffold {request.blueprint_id} in {request.region_id}: {request.reason}"[:2000],
            scaffold_id=request.request_id,
            created_epoch=epoch,
        )
        self._scaffolds[request.request_id] = _Scaffold(request, epoch, zone)
        return zone

    def observe_volatility(self, epoch: int, volatility: Mapping[str, float],
                           patterns: Mapping[str, Sequence[str]]) -> list[ProtectedZone]:
        """Open a zone over each domain that just turned volatile; note when open ones calm down."""
        opened = []
        for domain, level in volatility.items():
            state = self._volatile.get(domain)
            if state is None and level >= self.volatile_enter and patterns.get(domain):
                zone = ProtectedZone(
                    zone_id=f"volatile-{domain}", module_patterns=list(patterns[domain]),
                    reason=f"domain {domain} is volatile (gradient-spike score {level:.3f})", created_epoch=epoch,
                )
                self._volatile[domain] = _Volatile(zone)
                opened.append(zone)
            elif state is not None:
                if level > self.volatile_exit:
                    state.calm_since = None  # still (or again) volatile: the calm has to start over
                elif state.calm_since is None:
                    state.calm_since = epoch
        return opened

    # ------------------------------------------------------------------------------------------ lifting

    def observe_boundary(self, epoch: int, live_scaffolds: Iterable[tuple[str, str]],
                         clean_checkpoint: bool) -> list[ProtectedZone]:
        """Advance sunsets and lift zones at a clean checkpoint; returns zones to re-publish as lifted.

        ``live_scaffolds`` are ``(region_id, blueprint_id)`` pairs of seeds in live stages right now.
        """
        live = set(live_scaffolds)
        for s in self._scaffolds.values():
            if s.sunset_epoch is not None:
                continue
            here = (s.request.region_id, s.request.blueprint_id) in live
            s.seen_live = s.seen_live or here
            expired = epoch >= s.started_epoch + s.request.ttl_epochs
            if expired or (s.seen_live and not here):
                s.sunset_epoch = epoch
        lifted: list[ProtectedZone] = []
        if not clean_checkpoint:
            return lifted
        for request_id, s in list(self._scaffolds.items()):
            # "After the sunset": a checkpoint at the sunset boundary itself does not count.
            if s.sunset_epoch is not None and epoch > s.sunset_epoch:
                lifted.append(s.zone.model_copy(update={"expires_after_epoch": epoch}))
                del self._scaffolds[request_id]
        for domain, v in list(self._volatile.items()):
            if v.calm_since is not None and epoch > v.calm_since:
                lifted.append(v.zone.model_copy(update={"expires_after_epoch": epoch}))
                del self._volatile[domain]
        self._lifted = (self._lifted + lifted)[-100:]
        return lifted

    # ------------------------------------------------------------------------------------------ queries

    def active(self) -> list[ProtectedZone]:
        """Zones in force now."""
        return [s.zone for s in self._scaffolds.values()] + [v.zone for v in self._volatile.values()]

    def recently_lifted(self) -> list[ProtectedZone]:
        """The last zones lifted (at most 100), oldest first."""
        return list(self._lifted)

    def covers(self, module_path: str) -> bool:
        """Whether an active zone protects ``module_path`` (same matching as the domains file)."""
        return any(_matches(module_path, p) for z in self.active() for p in z.module_patterns)

    def scaffold_regions(self) -> set[str]:
        """Regions holding a scaffold that has not sunset yet."""
        return {s.request.region_id for s in self._scaffolds.values() if s.sunset_epoch is None}


def _ring(region_id: str, ordered_regions: Sequence[str], radius: int) -> list[str]:
    """The region and ``radius`` neighbours on each side in model order (just the region if unplaced)."""
    if region_id not in ordered_regions:
        return [region_id]
    i = list(ordered_regions).index(region_id)
    return list(ordered_regions[max(0, i - radius): i + radius + 1])


def _matches(module_path: str, pattern: str) -> bool:
    return (module_path == pattern or module_path.startswith(pattern + ".")
            or fnmatch.fnmatchcase(module_path, pattern))
