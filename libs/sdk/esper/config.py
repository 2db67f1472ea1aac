"""One YAML file configures a whole run: ``tolaria`` (the loop and the task), ``kasmina`` (the seeds), ``tamiyo``
(the policy), ``model`` (the host, by import path) and ``platform`` (where the distributed platform runs, if it does).

Every section is a pydantic model that forbids unknown keys, so a typo is an error that names the
key's full path (``tolaria.lerning_rate``) rather than a silently ignored option. Omitted sections
and keys take their defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from esper_policy import TamiyoConfig

from .kasmina import KasminaConfig


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message says which file and which key."""


class TolariaConfig(BaseModel):
    """The training loop: optimizers, epochs, checkpoints, rollback thresholds, where the run is written."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=64, ge=1, description="Used by helpers that build loaders from a config")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD only")
    seed_optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    seed_learning_rate: float = Field(default=3e-3, gt=0.0)
    grad_clip_norm: float | None = Field(default=None, gt=0.0)
    max_loss_spike_ratio: float = Field(
        default=3.0, gt=1.0, description="A spike: the epoch's train loss exceeds this × the recent median (and the "
        "MAD bar)")
    spike_window: int = Field(default=5, ge=2, description="Recent accepted epochs whose median and MAD the spike "
                              "test uses")
    spike_min_increase: float = Field(
        default=0.1, ge=0.0, description="A spike must also raise the loss by this much over the median, and an "
        "explosion is measured against at least this (tiny losses jitter by large ratios)"
    )
    spike_mad_k: float = Field(default=5.0, gt=0.0, description="A spike must exceed median + this × MAD (scaled "
                               "to a standard deviation)")
    spike_patience: int = Field(default=2, ge=1, description="Roll back only after this many spiking epochs in a "
                                "row (a lone spike is noise)")
    explosion_ratio: float = Field(default=10.0, gt=1.0, description="Roll back at once when the loss exceeds this "
                                   "× max(recent median, spike_min_increase)")
    max_rollbacks: int = Field(default=3, ge=0, description="Give up (raise) after this many rollbacks in one run")
    checkpoints_kept: int = Field(default=3, ge=1)
    run_dir: str = Field(default="runs", description="Runs are written to <run_dir>/<run_id>/")
    run_id: str | None = Field(default=None, description="Default: a fresh timestamped id")
    seed: int = Field(default=0, description="torch's global seed at the start of training")
    device: str = Field(default="cpu", description="'cuda' under torchrun means each rank's own GPU (LOCAL_RANK)")
    collective_timeout_s: float = Field(
        default=300.0, gt=0.0, description="Several ranks: a rank that stops answering for this long fails the run "
        "(a rank that dies is noticed at once)")
    hardware: str | None = Field(
        default=None, pattern=r"^[a-z0-9_]+$", description="The hardware label of the compiled kernels this "
        "trainer asks for (Urza and the worker pools must use the same label); esper train on a platform "
        "defaults to the one detected here (e.g. cpu_avx512, cuda_sm90); None: any")
    task: str | None = Field(
        default=None, description="What to train on when the trainer is given no data: a built-in task "
        "(spirals) or 'package.module:factory' returning an esper.tasks.TaskData")
    progress_bar: bool | None = Field(default=None, description="None: only on an interactive terminal, not in CI")
    log_lines: bool = Field(default=True, description="Print one line per epoch and per lifecycle transition")


class PlatformConfig(BaseModel):
    """Where the distributed platform runs. Present in a run config, the trainer joins it instead of starting one.

    Credentials never sit in the file: ``urza_token_env`` and ``coordinator_token_env`` name the environment
    variables holding the trainer's bearer tokens for Urza (viewer role) and the Narset coordinator (operator
    role); a Kubernetes Secret or a compose env_file sets them. They may name the same variable.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    bus_url: str = Field(pattern=r"^(pulsar|pulsar\+ssl|memory)://", description="The Oona bus (Pulsar in production)")
    urza_url: str = Field(pattern=r"^https?://", description="Urza's REST API, where Kasmina fetches kernels")
    coordinator_url: str = Field(pattern=r"^https?://", description="The Narset coordinator's REST API")
    topic_prefix: str = Field(default="", description="Prefix of every bus topic (isolates one platform's runs)")
    urza_token_env: str | None = Field(default="ESPER_URZA_TOKEN",
                                       description="Environment variable holding Urza's token (unset: no token)")
    coordinator_token_env: str | None = Field(
        default="ESPER_COORDINATOR_TOKEN",
        description="Environment variable holding the Narset coordinator's token (unset: no token)")
    connect_timeout_s: float = Field(default=30.0, gt=0.0, description="Give up joining the platform after this")
    decision_timeout_s: float = Field(default=30.0, gt=0.0, description="Wait this long for Tamiyo's answer")

    def urza_token(self) -> str | None:
        """Urza's bearer token from the environment variable ``urza_token_env`` names (never from the file)."""
        return (os.environ.get(self.urza_token_env) or None) if self.urza_token_env else None

    def coordinator_token(self) -> str | None:
        """The coordinator's bearer token from the variable ``coordinator_token_env`` names."""
        return (os.environ.get(self.coordinator_token_env) or None) if self.coordinator_token_env else None


class EsperConfig(BaseModel):
    """A whole run's configuration."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = Field(
        default=None, description="'package.module:factory' building the host from the task (factory(task) -> "
        "nn.Module); default: a small MLP sized to the task")
    tolaria: TolariaConfig = Field(default_factory=TolariaConfig)
    kasmina: KasminaConfig = Field(default_factory=KasminaConfig)
    tamiyo: TamiyoConfig = Field(default_factory=TamiyoConfig)
    platform: PlatformConfig | None = Field(
        default=None, description="Join a running platform (bus, Urza, Narset coordinator, Tamiyo service); "
        "absent: the embedded standalone platform runs in process")


def _describe(err: ValidationError, source: str) -> str:
    """One line per problem, each led by the dotted path of the offending key."""
    lines = []
    for e in err.errors():
        path = ".".join(str(part) for part in e["loc"]) or "<top level>"
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        else:
            lines.append(f"{path}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: invalid configuration\n  " + "\n  ".join(lines)


def parse_config(data: Any, source: str = "<config>") -> EsperConfig:
    """Validate an already-parsed mapping (e.g. from YAML); raise ConfigError naming each bad key's path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return EsperConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from None


def load_config(path: str | Path) -> EsperConfig:
    """Read one YAML file for a whole run (sections ``tolaria``, ``kasmina``, ``tamiyo``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, str(path))
