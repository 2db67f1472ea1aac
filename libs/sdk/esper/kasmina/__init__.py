"""Kasmina: seed slots inside the model — the lifecycle state machine, alpha blending, telemetry, kernel loading."""

from .blending import ChunkLayout, alpha_at, blend, chunk_bounds
from .config import KasminaConfig
from .grafted import GraftedModule
from .layer import KasminaLayer
from .lifecycle import SeedFacts, resolve_command
from .model import (
    apply_commands,
    begin_boundary,
    collect_telemetry,
    drain_events,
    drain_transitions,
    host_parameter_count,
    kasmina_layers,
    pending_kernel_failures,
    poll_loads,
    reconstruction_loss,
    seed_parameter_count,
    seed_parameters,
    seed_stages,
    share_kernel_failure,
    unwrap,
    wait_for_loads,
    wrap,
)
from .state import StateField
from .telemetry import EventKind, SeedEvent, SeedTransition

__all__ = [
    "ChunkLayout", "EventKind", "GraftedModule", "KasminaConfig", "KasminaLayer", "SeedEvent", "SeedFacts",
    "SeedTransition", "StateField", "alpha_at", "apply_commands", "begin_boundary", "blend", "chunk_bounds",
    "collect_telemetry", "drain_events", "drain_transitions", "host_parameter_count", "kasmina_layers",
    "pending_kernel_failures", "poll_loads", "reconstruction_loss", "resolve_command", "seed_parameter_count",
    "seed_parameters", "seed_stages", "share_kernel_failure", "unwrap", "wait_for_loads", "wrap",
]
