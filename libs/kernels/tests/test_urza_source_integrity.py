"""The SDK refuses kernel bytes that do not match their digest, and says what Urza's record holds."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from esper_contracts import CompilationPipeline, CompiledKernelArtifact, artifact_id
from esper_kernels.errors import KernelIntegrityError
from esper_kernels.urza_source import UrzaKernelSource

BLUEPRINT = "a" * 64
ARTIFACT = artifact_id(BLUEPRINT, "cpu", CompilationPipeline.FAST, "b" * 12)
GOOD = b"the compiled kernel"
DIGEST = hashlib.sha256(GOOD).hexdigest()


class _Urza:
    """An Urza whose stored bytes rotted: its record and header hold the digest, the bytes no longer match."""

    def binary(self, _artifact_id: str) -> tuple[bytes, str | None]:
        return b"rotted bytes", DIGEST

    def kernel(self, aid: str) -> Any:
        return SimpleNamespace(artifact=CompiledKernelArtifact(
            artifact_id=aid, blueprint_id=BLUEPRINT, hardware="cpu", pipeline=CompilationPipeline.FAST,
            toolchain_hash="b" * 12, input_shape=[4, 8], sha256=DIGEST))


def test_the_refusal_names_the_digest_on_record() -> None:
    source = UrzaKernelSource(client=_Urza(), prewarm_loaders=False)  # type: ignore[arg-type]
    reasons: list[str] = []
    source.on_integrity_error.append(lambda _aid, reason: reasons.append(reason))
    with pytest.raises(KernelIntegrityError) as exc:
        source._blob(ARTIFACT)
    assert f"Urza's record says {DIGEST}" in str(exc.value)
    assert f"its response header says {DIGEST}" in str(exc.value)
    assert "None" not in str(exc.value) and reasons and "None" not in reasons[0]
    assert source.integrity_failures == 1
