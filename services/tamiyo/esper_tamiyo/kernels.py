"""Where Tamiyo's policy finds kernels: Urza over REST, a JSON file, or an object handed in by the caller.

Every source is wrapped by :class:`RiskFilter`, which drops kernels whose validation failed or whose
estimated risk is above the policy's ``max_kernel_risk``. The risk estimate is the one Narset prices
adaptations with (``tests/integration/test_control_schema.py`` checks the two agree).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import httpx

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


class KernelsUnavailable(RuntimeError):
    """The kernel source could not answer (after retries). Never read as "no kernels": the decision waits."""


class UrzaKernels:
    """Urza's kernel query (``POST /api/v1/kernels/query``) through the one Urza client.

    An error (unreachable, 401, 5xx, a timeout) is logged and retried with a growing pause; when every
    attempt failed, :class:`KernelsUnavailable` is raised, so the controller answers "wait" for this boundary
    instead of deciding that no kernel fits.
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 10.0, attempts: int = 4,
                 backoff_s: float = 0.25, http: httpx.Client | None = None) -> None:
        self._client = UrzaClient(base_url.rstrip("/"), token=token, timeout_s=timeout_s, http=http)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.failures = 0

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """Urza's answer to ``query``; KernelsUnavailable after ``attempts`` failed tries."""
        for attempt in range(1, self.attempts + 1):
            try:
                return self._client.query(query)
            except UrzaError as exc:
                self.failures += 1
                log.warning("Urza kernel query failed (attempt %d of %d): %s", attempt, self.attempts, exc)
                if attempt < self.attempts:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                last = exc
        raise KernelsUnavailable(f"Urza did not answer the kernel query after {self.attempts} attempts: {last}")

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()


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
    """Drops kernels that failed validation or exceed the risk ceiling (changed by policy updates).

    With ``require_report`` (kernels from Urza, where every VALIDATED artifact has Urabrask's report), a kernel
    without a validation report is dropped too: it was never measured, so its risk is unknown.
    """

    def __init__(self, inner: KernelSelector, max_risk: float = 1.0, *, require_report: bool = False) -> None:
        self.inner = inner
        self.max_risk = max_risk
        self.require_report = require_report

    def query(self, query: KernelQuery) -> KernelQueryResult:
        """The inner source's answer minus the kernels that are too risky or unmeasured."""
        result = self.inner.query(query)
        kept = [a for a in result.artifacts if self.acceptable(a)]
        return KernelQueryResult(artifacts=kept, total=len(kept))

    def acceptable(self, artifact: CompiledKernelArtifact) -> bool:
        """Whether the policy may choose ``artifact``."""
        report = artifact.validation
        if report is None:
            return not self.require_report and kernel_risk(None) <= self.max_risk
        return report.passed and kernel_risk(report) <= self.max_risk
