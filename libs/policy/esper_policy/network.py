"""A learned policy's artifact and its inference: JSON config plus float32 weights, NumPy only.

The artifact is one JSON document (no pickle, nothing executable)::

    {"format": "esper-policy/1", "version": "...", "observation_version": 1, "observation_size": 50,
     "n_actions": 25, "blueprints": [...], "hidden": [64, 64], "activation": "tanh",
     "weights": {"0.weight": {"shape": [64, 50], "data": "<base64 float32 little-endian>"}, ...}}

Layers are ``<i>.weight`` (out × in) and ``<i>.bias`` for i = 0 .. len(hidden); every hidden layer is
followed by the activation, the last one gives the action logits. :func:`load_artifact` checks all of
it (format, sizes against this build's observation and action space, shapes, finite values) and says
what is wrong, so Tamiyo can refuse a bad policy with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .observation import BLUEPRINTS, N_ACTIONS, OBSERVATION_SIZE, OBSERVATION_VERSION

FORMAT = "esper-policy/1"
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}
MAX_ARTIFACT_BYTES = 16 * 1024 * 1024


class PolicyArtifactError(ValueError):
    """A policy artifact that cannot be served here; the message says why."""


@dataclass
class PolicyNetwork:
    """An MLP from observation to action logits, evaluated with NumPy in float32."""

    version: str
    hidden: list[int]
    activation: str
    weights: dict[str, np.ndarray]
    metadata: dict[str, Any] = field(default_factory=dict)

    def logits(self, observation: Sequence[float]) -> np.ndarray:
        """Action logits for one observation."""
        x = np.asarray(observation, dtype=np.float32)
        act = ACTIVATIONS[self.activation]
        for i in range(len(self.hidden)):
            x = act(self.weights[f"{i}.weight"] @ x + self.weights[f"{i}.bias"])
        last = len(self.hidden)
        out: np.ndarray = self.weights[f"{last}.weight"] @ x + self.weights[f"{last}.bias"]
        return out

    def act(self, observation: Sequence[float], mask: Sequence[bool]) -> int:
        """The most likely action among those ``mask`` allows (WAIT when none is allowed)."""
        logits = self.logits(observation).astype(np.float64)
        allowed = np.asarray(mask, dtype=bool)
        if not allowed.any():
            return 0
        logits[~allowed] = -np.inf
        return int(np.argmax(logits))

    def to_artifact(self) -> dict[str, Any]:
        """The JSON document that stores this network."""
        weights = {name: {"shape": list(w.shape),
                          "data": base64.b64encode(w.astype("<f4").tobytes()).decode("ascii")}
                   for name, w in self.weights.items()}
        return {"format": FORMAT, "version": self.version, "observation_version": OBSERVATION_VERSION,
                "observation_size": OBSERVATION_SIZE, "n_actions": N_ACTIONS, "blueprints": list(BLUEPRINTS),
                "hidden": list(self.hidden), "activation": self.activation, "metadata": self.metadata,
                "weights": weights}


def artifact_bytes(artifact: Mapping[str, Any]) -> bytes:
    """The canonical bytes of an artifact (sorted keys): what its sha256 is computed over."""
    return json.dumps(artifact, sort_keys=True, separators=(",", ":")).encode("utf-8")


def artifact_sha256(artifact: Mapping[str, Any]) -> str:
    """sha256 of :func:`artifact_bytes`."""
    return hashlib.sha256(artifact_bytes(artifact)).hexdigest()


def load_artifact(artifact: Any) -> PolicyNetwork:
    """Check an artifact document and build its network; PolicyArtifactError names the first problem."""
    if not isinstance(artifact, Mapping):
        raise PolicyArtifactError("a policy artifact is a JSON object")
    if artifact.get("format") != FORMAT:
        raise PolicyArtifactError(f"format {artifact.get('format')!r} is not {FORMAT!r}")
    expected = {"observation_version": OBSERVATION_VERSION, "observation_size": OBSERVATION_SIZE,
                "n_actions": N_ACTIONS, "blueprints": list(BLUEPRINTS)}
    for key, value in expected.items():
        if artifact.get(key) != value:
            raise PolicyArtifactError(
                f"incompatible policy: {key} is {artifact.get(key)!r}, this Tamiyo needs {value!r}")
    version = artifact.get("version")
    if not isinstance(version, str) or not version:
        raise PolicyArtifactError("the artifact names no version")
    hidden = artifact.get("hidden")
    if not isinstance(hidden, list) or not all(isinstance(h, int) and 0 < h <= 4096 for h in hidden) or len(hidden) > 8:
        raise PolicyArtifactError(f"hidden must list up to 8 layer widths in 1..4096, got {hidden!r}")
    activation = artifact.get("activation")
    if activation not in ACTIVATIONS:
        raise PolicyArtifactError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    raw = artifact.get("weights")
    if not isinstance(raw, Mapping):
        raise PolicyArtifactError("weights must be an object of named tensors")
    sizes = [OBSERVATION_SIZE, *hidden, N_ACTIONS]
    weights: dict[str, np.ndarray] = {}
    for i in range(len(sizes) - 1):
        for name, shape in ((f"{i}.weight", [sizes[i + 1], sizes[i]]), (f"{i}.bias", [sizes[i + 1]])):
            weights[name] = _tensor(raw, name, shape)
    extra = set(raw) - set(weights)
    if extra:
        raise PolicyArtifactError(f"unexpected weights {sorted(extra)}")
    metadata = artifact.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise PolicyArtifactError("metadata must be an object")
    return PolicyNetwork(version=version, hidden=list(hidden), activation=str(activation), weights=weights,
                         metadata=dict(metadata))


def _tensor(raw: Mapping[str, Any], name: str, shape: list[int]) -> np.ndarray:
    entry = raw.get(name)
    if not isinstance(entry, Mapping) or list(entry.get("shape", [])) != shape:
        got = entry.get("shape") if isinstance(entry, Mapping) else None
        raise PolicyArtifactError(f"weight {name} must have shape {shape}, got {got!r}")
    try:
        data = base64.b64decode(str(entry.get("data", "")), validate=True)
    except ValueError as exc:
        raise PolicyArtifactError(f"weight {name}: data is not base64 ({exc})") from None
    if len(data) != 4 * int(np.prod(shape)):
        raise PolicyArtifactError(f"weight {name}: {len(data)} bytes, {4 * int(np.prod(shape))} expected")
    array = np.frombuffer(data, dtype="<f4").reshape(shape).astype(np.float32)
    if not np.isfinite(array).all():
        raise PolicyArtifactError(f"weight {name} holds non-finite values")
    return array


def random_network(version: str, hidden: Sequence[int] = (64, 64), seed: int = 0) -> PolicyNetwork:
    """A network with small random weights (tests, and a starting point)."""
    rng = np.random.default_rng(seed)
    sizes = [OBSERVATION_SIZE, *hidden, N_ACTIONS]
    weights: dict[str, np.ndarray] = {}
    for i in range(len(sizes) - 1):
        weights[f"{i}.weight"] = (rng.standard_normal((sizes[i + 1], sizes[i])) / np.sqrt(sizes[i])).astype(np.float32)
        weights[f"{i}.bias"] = np.zeros(sizes[i + 1], dtype=np.float32)
    return PolicyNetwork(version=version, hidden=list(hidden), activation="tanh", weights=weights)
