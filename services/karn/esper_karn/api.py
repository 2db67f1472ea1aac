"""Karn's REST API (``/api/v1``): what it knows, what its policy believes, and proposal rounds on request.

Viewers read; asking for a round (it submits blueprints to Urza) needs the operator role.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, HTTPException
from pydantic import BaseModel, Field

from esper_contracts.base import PositiveInt32, Text
from esper_runtime import Role, require
from esper_urza_client import UrzaError

from .diversity import diversity_score
from .tinkerer import RoundReport, Tinkerer


class RoundRequest(BaseModel):
    """Ask for a proposal round now (pacing still applies)."""

    model_config = {"extra": "forbid"}

    count: int = Field(default=2, ge=1, le=64, description="children wanted")
    tags: list[Text] = Field(default_factory=list, max_length=8, description="extra design tags for the children")
    parent_ids: list[str] | None = Field(default=None, description="only these parents (default: every validated)")
    layout: str | None = Field(default=None, pattern=r"^(BD|BTD|BCHW)$")
    features: PositiveInt32 | None = Field(default=None, description="the interface's feature size (int32, as in "
                                           "the contracts)")


class ArmView(BaseModel):
    """One arm of the mutation policy: its Beta posterior."""

    kind: str
    operator: str
    alpha: float
    beta: float
    mean: float
    trials: float


class StatusView(BaseModel):
    """How much Karn has seen, and the library's diversity as its sampler judges it."""

    library: int
    children: int
    unresolved_children: int
    field_reports: int
    validation_reports: int
    diversity: float
    diversity_reference: float
    novelty_bonus_weight: float
    last_round: RoundReport | None


def install_api(app: FastAPI, tinkerer: Tinkerer) -> None:
    """Mount ``/api/v1`` on ``app`` (whose /healthz, /metrics and /docs come from esper_runtime)."""
    router = APIRouter(prefix="/api/v1", tags=["karn"], dependencies=[require(Role.VIEWER)])

    @router.get("/status", response_model=StatusView)
    def status() -> StatusView:
        """Library size, Karn's children (and how many await judgement), reports kept, diversity."""
        counts = tinkerer.history.counts()
        score = diversity_score([e.vector for e in tinkerer.history.library()])
        sampler = tinkerer.architect.sampler
        return StatusView(**counts, unresolved_children=len(tinkerer.history.unresolved_children()),
                          diversity=score, diversity_reference=max(sampler.reference, score),
                          novelty_bonus_weight=sampler.bonus_weight(score), last_round=tinkerer.last_round)

    @router.get("/policy", response_model=list[ArmView])
    def policy() -> list[ArmView]:
        """Every arm with evidence: (parent kind, operator) and its posterior, best mean first."""
        bandit = tinkerer.policy()
        arms = [bandit.posterior(kind, op) for kind, op in bandit.evidence]
        return [ArmView(kind=a.kind, operator=a.operator, alpha=a.alpha, beta=a.beta, mean=a.mean, trials=a.trials)
                for a in sorted(arms, key=lambda a: -a.mean)]

    @router.post("/rounds", response_model=RoundReport, dependencies=[require(Role.OPERATOR)])
    def run_round(request: RoundRequest) -> RoundReport:
        """Run a proposal round now: 200 with what was submitted (possibly nothing, with the reason)."""
        try:
            return tinkerer.run_round(request.count, tags=tuple(request.tags), parent_ids=request.parent_ids,
                                      layout=request.layout, features=request.features)
        except UrzaError as exc:
            raise HTTPException(502, f"Urza: {exc}") from None

    app.include_router(router)
