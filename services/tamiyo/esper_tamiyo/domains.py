"""Hierarchical control configuration: the model cut into named domains by module-path patterns.

A domain is a human-chosen part of the host model ("the embeddings", "the early blocks", "the head").
Tamiyo-Prime never looks at individual seeds: it scores each domain from its health summaries and
shares the global adaptation budget (ATP) between domains. Regions — Kasmina layers, named by module
path — belong to the first domain (in file order) with a matching pattern.

A pattern matches a module path when it equals it, is a dotted prefix of it (``transformer.h.1``
matches ``transformer.h.1.mlp.c_fc`` but not ``transformer.h.10``), or matches it as an fnmatch glob
(``transformer.h.*``).
"""

from __future__ import annotations

import fnmatch
from functools import lru_cache
from pathlib import Path
from typing import Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Domain of regions that no pattern claims; it has no configured budget but can earn one by criticality.
UNASSIGNED_DOMAIN = "unassigned"


class DomainsFileError(ValueError):
    """The domains file is missing, is not YAML, or does not describe valid domains."""


class TamiyoPrimeConfig(BaseModel):
    """How Tamiyo-Prime turns domain health into budgets."""

    model_config = ConfigDict(extra="forbid")

    attention_window: int = Field(default=16, ge=1, description="Most recent health summaries (all domains) scored")
    atp_global_budget: float = Field(default=50.0, gt=0, allow_inf_nan=False, description="ATP minted per cycle")
    attention_share: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Share of the budget that follows criticality (the rest: the prior)"
    )
    attention_temperature: float = Field(
        default=0.25, gt=0.0, allow_inf_nan=False, description="Softmax temperature over criticality scores"
    )
    emergency_fraction: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Share of each cycle's pool held back for scaffolds in crisis"
    )
    proposal_reserve_fraction: float = Field(
        default=0.2, ge=0.0, le=0.9, description="Share of each cycle's pool left unallocated to fund proposals"
    )

    @model_validator(mode="after")
    def _reserves_leave_something(self) -> Self:
        if self.emergency_fraction + self.proposal_reserve_fraction >= 1.0:
            raise ValueError(
                f"emergency_fraction + proposal_reserve_fraction = "
                f"{self.emergency_fraction + self.proposal_reserve_fraction} leaves nothing to allocate"
            )
        return self


class DomainConfig(BaseModel):
    """One domain: which modules it covers and the budget it starts with."""

    model_config = ConfigDict(extra="forbid")

    module_paths: list[str] = Field(min_length=1)
    atp_initial_budget: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    description: str = ""


class HierarchicalControlConfig(BaseModel):
    """The ``hierarchical_control`` section of a domains file."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    tamiyo_prime: TamiyoPrimeConfig = Field(default_factory=TamiyoPrimeConfig)
    domains: dict[str, DomainConfig] = Field(default_factory=lambda: {"model": DomainConfig(module_paths=["*"])})

    @model_validator(mode="after")
    def _patterns_are_unambiguous(self) -> Self:
        if not self.domains:
            raise ValueError("at least one domain is needed")
        if UNASSIGNED_DOMAIN in self.domains:
            raise ValueError(f"{UNASSIGNED_DOMAIN!r} is reserved for regions no domain claims")
        owner: dict[str, str] = {}
        for name, domain in self.domains.items():
            for pattern in domain.module_paths:
                if not pattern.strip():
                    raise ValueError(f"domain {name!r} has an empty module path pattern")
                if pattern in owner:
                    raise ValueError(f"pattern {pattern!r} is listed by both {owner[pattern]!r} and {name!r}")
                owner[pattern] = name
        return self

    def domain_of(self, module_path: str) -> str:
        """The domain owning ``module_path`` (first match in file order), else ``unassigned``."""
        return _domain_of(self._patterns(), module_path)

    def _patterns(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return tuple((name, tuple(d.module_paths)) for name, d in self.domains.items())

    def initial_budgets(self) -> dict[str, float]:
        """Each configured domain's starting budget, in file order."""
        return {name: d.atp_initial_budget for name, d in self.domains.items()}


@lru_cache(maxsize=65536)
def _domain_of(patterns: tuple[tuple[str, tuple[str, ...]], ...], module_path: str) -> str:
    # Cached: regions are few and stable, and every packet asks again for each of them.
    for name, paths in patterns:
        for pattern in paths:
            if module_path == pattern or module_path.startswith(pattern + "."):
                return name
            if fnmatch.fnmatchcase(module_path, pattern) or fnmatch.fnmatchcase(module_path, pattern + ".*"):
                return name
    return UNASSIGNED_DOMAIN


def load_domains(path: str | Path | None) -> HierarchicalControlConfig:
    """Read a domains file (``hierarchical_control:`` at the top); no path gives one domain covering everything."""
    if path is None:
        return HierarchicalControlConfig()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise DomainsFileError(f"domains file not found: {p}") from None
    except yaml.YAMLError as exc:
        raise DomainsFileError(f"domains file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "hierarchical_control" not in data:
        raise DomainsFileError(f"domains file {p} must hold a mapping with a 'hierarchical_control' section")
    try:
        return HierarchicalControlConfig.model_validate(data["hierarchical_control"])
    except ValidationError as exc:
        raise DomainsFileError(f"domains file {p} is invalid: {exc}") from None
