"""Errors raised while validating, storing and loading blueprint kernels."""

from __future__ import annotations

from esper_contracts import KernelNotFoundError


class IRValidationError(ValueError):
    """A BlueprintIR that cannot be built: bad attributes, mismatched shapes, or too many parameters.

    The message names the node and the value that was wrong.
    """


class KernelIntegrityError(RuntimeError):
    """The bytes of a kernel artifact do not match their recorded sha256."""


class KernelFormatError(ValueError):
    """Bytes that are not a well-formed compiled kernel artifact (or carry something we refuse to load)."""


class KernelHardwareError(RuntimeError):
    """A compiled kernel built for a device or instruction set this process does not have."""


__all__ = ["IRValidationError", "KernelFormatError", "KernelHardwareError", "KernelIntegrityError",
           "KernelNotFoundError"]
