"""The Narset coordinator: maps regions to Narset workers, watches them, and folds their telemetry for Tamiyo."""

from .aggregation import TelemetryTree, fold
from .mapping import PoolLimits, RegionMap

__all__ = ["PoolLimits", "RegionMap", "TelemetryTree", "fold"]
