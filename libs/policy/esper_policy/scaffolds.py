"""Tamiyo's scaffold steward: funds scaffold requests from the emergency pool, protects their region, places them.

Seed 002 §7: a scaffold is a blueprint of class ``scaffold`` that arrives when a region is in trouble,
stabilises it, teaches the host and leaves. The steward is the transport-free part Tamiyo runs:

* :meth:`ScaffoldSteward.consider` answers one :class:`~esper_contracts.ScaffoldRequest`. Refused, with the
  reason and nothing funded: an unknown region, a region already scaffolded, an ask larger than what is left
  of the emergency pool, a region with no dormant slot or no scaffold kernel for it. Accepted: the ask is
  taken from the emergency pool, a :class:`~esper_contracts.ProtectedZone` covers the region with an embargo
  ring of ``ring_radius`` neighbours each side (``ring_patterns``), and a GERMINATE of a scaffold kernel
  (tagged :data:`SCAFFOLD_TAG`) goes to a dormant seed of the region.
* :meth:`ScaffoldSteward.observe` follows placed scaffolds at each boundary: a scaffold whose seed left the
  live stages has sunset (Kasmina weaned it off and removed it); one past its TTL has sunset anyway and is
  escalated. At sunset the energy it did not use (its share of the TTL left) goes back to the pool. The zone
  holds until one clean checkpoint *after* the sunset, then is re-published with ``expires_after_epoch``.

Every reader of zones (Narset, the policy, Emrakul) judges a module by ``ProtectedZone.covers``; for
germinations :func:`blocking_zone` adds the one exemption, the zone's own scaffold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from esper_contracts import CommandType, KasminaControlCommand, ProtectedZone, ScaffoldRequest, SeedStage

#: The tag on a scaffold's GERMINATE: the only germination a protected zone lets in (its own scaffold).
SCAFFOLD_TAG = "scaffold"

#: Finds a scaffold kernel for a slot: (layer id, seed index, requested blueprint) -> artifact id, or None.
KernelFinder = Callable[[str, int, str], str | None]


def is_scaffold_command(cmd: KasminaControlCommand) -> bool:
    """Whether ``cmd`` germinates a scaffold placed by the steward."""
    return cmd.command is CommandType.GERMINATE and SCAFFOLD_TAG in cmd.selected_for_tags


def blocking_zone(cmd: KasminaControlCommand, zones: Iterable[ProtectedZone], epoch: int) -> ProtectedZone | None:
    """The zone that embargoes ``cmd`` at ``epoch`` (None if it may go ahead).

    Only germinations are embargoed (moving or ending a live adaptation is not new surgery), and a scaffold's
    own germination is let in.
    """
    if cmd.command is not CommandType.GERMINATE or is_scaffold_command(cmd):
        return None
    return next((z for z in zones if z.covers(cmd.seed_id, epoch)), None)


@dataclass(frozen=True)
class ScaffoldVerdict:
    """The steward's answer to one request."""

    request_id: str
    region_id: str
    accepted: bool
    reason: str
    granted: float = 0.0
    zone: ProtectedZone | None = None
    command: KasminaControlCommand | None = None


@dataclass
class PlacedScaffold:
    """A funded scaffold, from germination to the lifting of its zone."""

    request: ScaffoldRequest
    zone: ProtectedZone
    layer_id: str
    seed_index: int
    granted: float
    started_epoch: int
    seen_live: bool = False
    sunset_epoch: int | None = None
    outcome: str | None = None  # "weaned" | "ttl_expired"
    refunded: float = 0.0

    @property
    def seed_id(self) -> str:
        """The seed the scaffold lives in."""
        return f"{self.layer_id}[{self.seed_index}]"


@dataclass
class StewardReport:
    """What one boundary changed: zones to (re)publish, sunsets, escalations."""

    zones: list[ProtectedZone] = field(default_factory=list)
    sunsets: list[PlacedScaffold] = field(default_factory=list)
    escalations: list[str] = field(default_factory=list)  # regions whose scaffold ran out of time


def ring_of(region_id: str, ordered_regions: Sequence[str], radius: int) -> list[str]:
    """The ``radius`` neighbours of ``region_id`` on each side, in model order (not the region itself)."""
    regions = list(ordered_regions)
    i = regions.index(region_id)
    return regions[max(0, i - radius):i] + regions[i + 1:i + 1 + radius]


class ScaffoldSteward:
    """Emergency pool, scaffold zones and placements (the caller serialises access)."""

    def __init__(self, emergency_pool: float, ring_radius: int = 1) -> None:
        if emergency_pool < 0 or ring_radius < 0:
            raise ValueError(f"need emergency_pool >= 0 and ring_radius >= 0, got {emergency_pool}, {ring_radius}")
        self.emergency_pool = emergency_pool
        self.emergency_left = emergency_pool
        self.ring_radius = ring_radius
        self.placed: dict[str, PlacedScaffold] = {}  # request id -> scaffold, until its zone is lifted
        self.lifted: list[ProtectedZone] = []

    # ------------------------------------------------------------------------------------------ requests

    def consider(self, request: ScaffoldRequest, epoch: int, ordered_regions: Sequence[str],
                 dormant: Mapping[str, Sequence[int]], find_kernel: KernelFinder) -> ScaffoldVerdict:
        """Fund, protect and place ``request``, or refuse it with the reason (nothing funded then)."""
        known = self.placed.get(request.request_id)
        if known is not None:  # a redelivery: the same answer, nothing funded twice
            return ScaffoldVerdict(request.request_id, request.region_id, True, "already placed",
                                   known.granted, known.zone)
        region = request.region_id

        def refuse(why: str) -> ScaffoldVerdict:
            return ScaffoldVerdict(request.request_id, region, False, why)

        if region not in ordered_regions:
            return refuse(f"unknown region {region!r}")
        if any(p.request.region_id == region for p in self.placed.values()):
            return refuse(f"region {region!r} already holds a scaffold (or its embargo)")
        if request.ask > self.emergency_left + 1e-12:
            return refuse(f"asks {request.ask:.4g} but the emergency pool holds {self.emergency_left:.4g}")
        slots = list(dormant.get(region, ()))
        if not slots:
            return refuse(f"region {region!r} has no dormant slot")
        index = slots[0]
        kernel = find_kernel(region, index, request.blueprint_id)
        if kernel is None:
            return refuse(f"no scaffold kernel {request.blueprint_id!r} fits {region}[{index}]")
        zone = ProtectedZone(
            zone_id=f"scaffold-{request.request_id}", module_patterns=[region],
            ring_patterns=ring_of(region, ordered_regions, self.ring_radius),
            reason=f"scaffold {request.blueprint_id} in {region}: {request.reason}"[:2000],
            scaffold_id=request.request_id, created_epoch=epoch,
        )
        command = KasminaControlCommand(
            layer_id=region, seed_index=index, command=CommandType.GERMINATE, kernel_artifact_id=kernel,
            blueprint_id=request.blueprint_id, selected_for_tags=[SCAFFOLD_TAG, request.blueprint_id][:16],
            issued_at_epoch=epoch, reason=f"scaffold for {region}: {request.reason}"[:2000],
        )
        self.emergency_left -= request.ask
        self.placed[request.request_id] = PlacedScaffold(request, zone, region, index, request.ask, epoch)
        return ScaffoldVerdict(request.request_id, region, True, f"funded {request.ask:.4g} from the emergency pool",
                               request.ask, zone, command)

    # ------------------------------------------------------------------------------------------ boundaries

    def observe(self, epoch: int, stages: Mapping[str, SeedStage], clean_checkpoint: bool) -> StewardReport:
        """Advance sunsets (weaned off, or out of time) and lift zones one clean checkpoint after a sunset.

        ``stages`` maps seed ids to their stage now (seeds absent from it count as not live).
        """
        report = StewardReport()
        for s in self.placed.values():
            if s.sunset_epoch is not None:
                continue
            stage = stages.get(s.seed_id, SeedStage.DORMANT)
            live = stage not in (SeedStage.DORMANT, SeedStage.CULLED, SeedStage.CANCELLED, SeedStage.ROLLED_BACK)
            s.seen_live = s.seen_live or live
            if s.seen_live and not live:
                self._sunset(s, epoch, "weaned")
                report.sunsets.append(s)
            elif epoch >= s.started_epoch + s.request.ttl_epochs:
                self._sunset(s, epoch, "ttl_expired")
                report.sunsets.append(s)
                report.escalations.append(s.request.region_id)
        if clean_checkpoint:
            for request_id, s in list(self.placed.items()):
                if s.sunset_epoch is not None and epoch > s.sunset_epoch:
                    lifted = s.zone.model_copy(update={"expires_after_epoch": epoch})
                    report.zones.append(lifted)
                    self.lifted = [*self.lifted, lifted][-100:]
                    del self.placed[request_id]
        return report

    def _sunset(self, s: PlacedScaffold, epoch: int, outcome: str) -> None:
        """Close a scaffold: the energy of the TTL it did not use goes back to the emergency pool."""
        used = min(1.0, max(0, epoch - s.started_epoch) / s.request.ttl_epochs)
        s.sunset_epoch, s.outcome = epoch, outcome
        s.refunded = s.granted * (1.0 - used)
        self.emergency_left = min(self.emergency_pool, self.emergency_left + s.refunded)

    # ------------------------------------------------------------------------------------------ queries

    def zones(self) -> list[ProtectedZone]:
        """Zones in force (a sunset scaffold's zone holds until it is lifted)."""
        return [s.zone for s in self.placed.values()]

    def scaffold_seeds(self) -> set[str]:
        """Seeds holding a scaffold that has not sunset (the policy leaves them to Kasmina's supervisor)."""
        return {s.seed_id for s in self.placed.values() if s.sunset_epoch is None}

    def state_dict(self) -> dict[str, Any]:
        """The steward's books as plain JSON."""
        return {"emergency_left": self.emergency_left, "placed": {
            rid: {"request": s.request.model_dump(mode="json"), "zone": s.zone.model_dump(mode="json"),
                  "layer_id": s.layer_id, "seed_index": s.seed_index, "granted": s.granted,
                  "started_epoch": s.started_epoch, "seen_live": s.seen_live, "sunset_epoch": s.sunset_epoch,
                  "outcome": s.outcome, "refunded": s.refunded} for rid, s in self.placed.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.emergency_left = float(state["emergency_left"])
        self.placed = {rid: PlacedScaffold(
            request=ScaffoldRequest.model_validate(p["request"]), zone=ProtectedZone.model_validate(p["zone"]),
            layer_id=p["layer_id"], seed_index=int(p["seed_index"]), granted=float(p["granted"]),
            started_epoch=int(p["started_epoch"]), seen_live=bool(p["seen_live"]), sunset_epoch=p["sunset_epoch"],
            outcome=p["outcome"], refunded=float(p["refunded"])) for rid, p in state["placed"].items()}
