"""Tamiyo, the strategic controller: the control policy, the budget economy (Tamiyo-Prime, allocations,
opportunity proposals, emergency pool), protected zones, and the REST status API."""

from .controller import ControllerOptions, Outgoing, PolicyUpdateError, TamiyoController
from .domains import HierarchicalControlConfig, load_domains
from .economy import BudgetEconomy, Cycle, Region
from .prime import TamiyoPrime, score_report
from .zones import ProtectedZones

__all__ = [
    "BudgetEconomy", "ControllerOptions", "Cycle", "HierarchicalControlConfig", "Outgoing", "PolicyUpdateError",
    "ProtectedZones", "Region", "TamiyoController", "TamiyoPrime", "load_domains", "score_report",
]
