"""Errors every side of the platform raises and catches by the same name."""

from __future__ import annotations


class KernelNotFoundError(KeyError):
    """No kernel artifact (or blueprint) with this id is known where it was looked up.

    Raised by the Urza client on a 404, by in-process kernel libraries and by Kasmina's kernel sources, so a
    caller catches one name whichever source it holds.
    """

    def __str__(self) -> str:  # KeyError quotes its argument; keep the reason readable
        return str(self.args[0]) if self.args else "kernel not found"
