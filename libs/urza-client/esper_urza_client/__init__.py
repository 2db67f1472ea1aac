"""The torch-free client of Urza's REST API."""

from esper_contracts import KernelNotFoundError

from .client import BinaryConflictError, KernelRecord, UrzaClient, UrzaError

__all__ = ["BinaryConflictError", "KernelNotFoundError", "KernelRecord", "UrzaClient", "UrzaError"]
