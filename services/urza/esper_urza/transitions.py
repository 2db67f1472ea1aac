"""The artifact status machine: which moves are legal, which are repeats, and which are late news.

    (new) ─▶ PENDING ─▶ COMPILING ─▶ COMPILED ─▶ VALIDATING ─▶ VALIDATED
                 │          │    ▲        │            └──────▶ REJECTED
                 └──────────┴─▶ FAILED ───┘ (a retried compile)  COMPILED ─▶ VALIDATED | REJECTED

Messages arrive at least once and not always in order, so a handler must tell three cases apart:
a legal move (apply it), the same status again (a redelivery: do nothing) and an older status than the
one recorded (late news, e.g. COMPILING after COMPILED: ignore it). Anything else is a contradiction and
is refused.
"""

from __future__ import annotations

from enum import StrEnum

from esper_contracts import KernelStatus

S = KernelStatus

#: status -> statuses it may move to
LEGAL_MOVES: dict[KernelStatus | None, frozenset[KernelStatus]] = {
    None: frozenset({S.PENDING, S.COMPILING, S.COMPILED, S.FAILED}),
    S.PENDING: frozenset({S.COMPILING, S.COMPILED, S.FAILED}),
    S.COMPILING: frozenset({S.COMPILED, S.FAILED}),
    S.FAILED: frozenset({S.COMPILING, S.COMPILED}),
    S.COMPILED: frozenset({S.VALIDATING, S.VALIDATED, S.REJECTED}),
    S.VALIDATING: frozenset({S.VALIDATED, S.REJECTED}),
    S.VALIDATED: frozenset(),
    S.REJECTED: frozenset(),
}

# How far along the pipeline each status is; a report of an earlier stage than the recorded one is late news.
_PROGRESS = {S.PENDING: 0, S.COMPILING: 1, S.FAILED: 2, S.COMPILED: 2, S.VALIDATING: 3, S.VALIDATED: 4,
             S.REJECTED: 4}

#: Statuses a compilation result may carry; validation outcomes come only from validation reports.
COMPILATION_STATUSES = frozenset({S.PENDING, S.COMPILING, S.COMPILED, S.FAILED})


class Decision(StrEnum):
    """What to do with a requested status."""

    APPLY = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"


class IllegalTransition(Exception):
    """A status move the machine forbids (or a payload contradicting what is recorded)."""

    def __init__(self, artifact_id: str, current: KernelStatus | None, requested: KernelStatus, why: str = "") -> None:
        now = current.value if current is not None else "(not recorded)"
        reason = why or f"{now} cannot move to {requested.value}"
        super().__init__(f"artifact {artifact_id}: illegal status change {now} -> {requested.value}: {reason}")
        self.artifact_id = artifact_id
        self.current = current
        self.requested = requested


def decide(artifact_id: str, current: KernelStatus | None, requested: KernelStatus) -> Decision:
    """Classify a requested move from ``current``; raise IllegalTransition when it contradicts the record."""
    if requested == current:
        return Decision.DUPLICATE
    if requested in LEGAL_MOVES[current]:
        return Decision.APPLY
    if current is not None and requested is S.FAILED and _PROGRESS[current] >= _PROGRESS[S.COMPILED]:
        # Another attempt's failure arriving after one attempt succeeded: the success stands.
        return Decision.STALE
    if current is not None and _PROGRESS[requested] < _PROGRESS[current]:
        return Decision.STALE
    raise IllegalTransition(artifact_id, current, requested)
