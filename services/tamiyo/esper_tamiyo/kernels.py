"""Where Tamiyo's policy finds kernels: Urza over REST, a JSON file, or an object handed in by the caller.

Every source is wrapped by :class:`RiskFilter`, which drops kernels whose validation failed or whose
estimated risk is above the policy's ``max_kernel_risk``. The risk estimate is the one Narset prices
adaptations with (``tests/integration/test_control_schema.py`` checks the two agree).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from esper_contracts import (
    BlueprintClass,
    BlueprintRecord,
    CompiledKernelArtifact,
    KernelQuery,
    KernelQueryResult,
    TensorInterface,
)
from esper_policy import KernelSelector, kernel_risk
from esper_urza_client import UrzaClient, UrzaError

log = logging.getLogger(__name__)


class UrzaKernels:
    """Urza's kernel query (``POST /api/v1/kernels/query``) through the one Urza client."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self._client = UrzaClient(base_url.rstrip("/"), timeout_s=timeout_s)

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """Ask Urza; an unreachable or failing Urza means no kernels this time, never a crashed decision."""
        try:
            return self._client.query(query)
        except UrzaError as exc:
            log.warning("Urza kernel query failed, deciding without new kernels: %s", exc)
            return KernelQueryResult()


class FileKernels:
    """A fixed catalogue: a JSON list of BlueprintRecords, each a blueprint's IR and its compiled artifacts.

    The records are those Urza serves (``GET /api/v1/blueprints/{id}``): the IR gives each artifact the
    class and interface a query filters on, so the file answers with Urza's rule (``KernelQuery.matches``).
    """

    def __init__(self, path: str | Path) -> None:
        data = json.loads(Path(path).read_text())
        records = [BlueprintRecord.model_validate(r) for r in data]
        self.entries: list[tuple[CompiledKernelArtifact, BlueprintClass, TensorInterface]] = [
            (a, r.ir.blueprint_class, r.ir.input) for r in records for a in r.artifacts
        ]

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """The artifacts matching ``query``, in file order."""
        found = [a for a, cls, iface in self.entries if query.matches(a, blueprint_class=cls, interface=iface)]
        return KernelQueryResult(artifacts=found[: query.limit], total=len(found))


class NoKernels:
    """No catalogue: the policy can steer existing seeds but never germinates."""

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """Always empty."""
        return KernelQueryResult()


class RiskFilter:
    """Drops kernels that failed validation or exceed the risk ceiling (changed by policy updates)."""

    def __init__(self, inner: KernelSelector, max_risk: float = 1.0) -> None:
        self.inner = inner
        self.max_risk = max_risk

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """The inner source's answer minus the kernels that are too risky."""
        result = self.inner.query(query)
        kept = [a for a in result.artifacts
                if (a.validation is None or a.validation.passed) and kernel_risk(a.validation) <= self.max_risk]
        return KernelQueryResult(artifacts=kept, total=len(kept))
