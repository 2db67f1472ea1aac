"""The platform's composite identifiers: kernel artifact ids and seed ids, parsed and formatted in one place.

Both types are ``str`` subclasses, so an id is usable wherever ids are plain strings today (dict keys,
JSON, URLs, contract fields, which store them as plain ``str``); the parts are read back through
properties instead of slicing the string by hand.
"""

from __future__ import annotations

import re
from typing import Self

from .enums import CompilationPipeline

#: ``<ir-hash>-<hardware>-<pipeline>-<toolchain-hash>``: the IR hash is the blueprint id (sha256 hex), the
#: hardware a lowercase token without dashes, the toolchain hash 12 to 64 hex characters.
ARTIFACT_ID_PATTERN = r"^[0-9a-f]{64}-[a-z0-9_]+-(eager|fast|standard|aggressive)-[0-9a-f]{12,64}$"
_ARTIFACT_ID = re.compile(ARTIFACT_ID_PATTERN)
_ARTIFACT_ID_FORM = "<ir-hash: 64 hex>-<hardware>-<eager|fast|standard|aggressive>-<toolchain-hash: 12-64 hex>"

_SEED_ID = re.compile(r"^(?P<layer>.+)\[(?P<index>0|[1-9][0-9]*)\]$")


class ArtifactId(str):
    """The id of one compiled kernel artifact: ``<ir-hash>-<hardware>-<pipeline>-<toolchain-hash>``.

    ``ArtifactId(blueprint_id, hardware, pipeline, toolchain_hash)`` formats one; ``ArtifactId.parse(text)``
    checks a string. Either raises ValueError naming the malformed value.
    """

    __slots__ = ()

    def __new__(cls, blueprint_id: str, hardware: str, pipeline: CompilationPipeline | str,
                toolchain_hash: str) -> Self:
        return cls.parse(f"{blueprint_id}-{hardware}-{CompilationPipeline(pipeline).value}-{toolchain_hash}")

    @classmethod
    def parse(cls, value: str) -> Self:
        """``value`` as an ArtifactId; raises ValueError (naming the value) if it is not one."""
        if not isinstance(value, str) or not _ARTIFACT_ID.match(value):
            raise ValueError(f"malformed artifact id {value!r}: expected {_ARTIFACT_ID_FORM}")
        return str.__new__(cls, value)

    @classmethod
    def is_valid(cls, value: object) -> bool:
        """Whether ``value`` is a well-formed artifact id."""
        return isinstance(value, str) and _ARTIFACT_ID.match(value) is not None

    @property
    def blueprint_id(self) -> str:
        """The IR hash the artifact was compiled from (its blueprint's id)."""
        return self[:64]

    @property
    def hardware(self) -> str:
        """The hardware target the artifact was built for."""
        return self.split("-")[1]

    @property
    def pipeline(self) -> CompilationPipeline:
        """The compilation pipeline that built the artifact."""
        return CompilationPipeline(self.split("-")[2])

    @property
    def toolchain_hash(self) -> str:
        """The hash of the toolchain (and compile options) that built the artifact."""
        return self.split("-")[3]

    def __getnewargs__(self) -> tuple[str, str, str, str]:  # type: ignore[override]
        # pickle and copy rebuild through __new__, which takes the parts, not the whole string
        return self.blueprint_id, self.hardware, self.pipeline.value, self.toolchain_hash


def blueprint_id_of(kernel_id: str | None) -> str | None:
    """The blueprint id inside a kernel artifact id; None for None or for an id that is not an artifact id.

    Kasmina accepts any id its kernel source knows (test sources use short names), so a kernel id that
    does not parse has no blueprint rather than a made-up one.
    """
    return kernel_id[:64] if kernel_id is not None and ArtifactId.is_valid(kernel_id) else None


class SeedId(str):
    """The readable id of one seed: ``<layer path>[<index>]``, e.g. ``hidden.0[3]``.

    ``SeedId(layer_id, seed_index)`` formats one; ``SeedId.parse(text)`` reads one back. Either raises
    ValueError naming the malformed value. The parts are ``layer_id`` and ``seed_index``, as in the
    contracts (``index`` would hide ``str.index``).
    """

    __slots__ = ()

    def __new__(cls, layer_id: str, seed_index: int) -> Self:
        if not isinstance(layer_id, str) or not layer_id or layer_id != layer_id.strip():
            raise ValueError(f"malformed seed id: layer {layer_id!r} must be a non-empty module path")
        if isinstance(seed_index, bool) or not isinstance(seed_index, int) or seed_index < 0:
            raise ValueError(f"malformed seed id: index {seed_index!r} of layer {layer_id!r} must be an integer >= 0")
        return str.__new__(cls, f"{layer_id}[{seed_index}]")

    @classmethod
    def parse(cls, value: str) -> Self:
        """``value`` as a SeedId; raises ValueError (naming the value) if it is not ``<layer>[<index>]``."""
        m = _SEED_ID.match(value) if isinstance(value, str) else None
        if m is None or m["layer"] != m["layer"].strip():
            raise ValueError(f"malformed seed id {value!r}: expected <layer path>[<index>], e.g. 'hidden.0[3]'")
        return str.__new__(cls, value)

    @property
    def layer_id(self) -> str:
        """The module path of the seed's KasminaLayer."""
        return self[: self.rindex("[")]

    @property
    def seed_index(self) -> int:
        """The seed's index (its chunk) within the layer."""
        return int(self[self.rindex("[") + 1 : -1])

    def __getnewargs__(self) -> tuple[str, int]:  # type: ignore[override]
        return self.layer_id, self.seed_index
