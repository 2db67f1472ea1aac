"""Errors raised while validating, storing and loading blueprint kernels."""

from __future__ import annotations


class IRValidationError(ValueError):
    """A BlueprintIR that cannot be built: bad attributes, mismatched shapes, or too many parameters.

    The message names the node and the value that was wrong.
    """


class KernelIntegrityError(RuntimeError):
    """The bytes of a kernel artifact do not match their recorded sha256."""


class KernelNotFoundError(KeyError):
    """No kernel artifact with this id is known to the kernel source."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the reason readable
        return str(self.args[0]) if self.args else "kernel not found"
