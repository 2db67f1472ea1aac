"""Find runnable services by name through the ``esper.services`` entry-point group.

Each service package declares ``[project.entry-points."esper.services"] <name> = "<module>:create_service"``,
so the CLI can start any installed service without importing (or depending on) the others.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .service import Service

ServiceFactory = Callable[..., Service]

#: Every service folder of the platform, runnable or not yet.
KNOWN_SERVICES = (
    "tamiyo", "narset-coordinator", "narset-worker", "urza", "tezzeret",
    "urabrask", "karn", "emrakul", "elesh", "nissa",
)


#: Parts of the platform that live inside the trainer process rather than as a process of their own.
IN_TRAINER_PROCESS = {"narset-worker": "import esper_narset_worker.NarsetHost as the trainer's controller"}


class UnknownServiceError(LookupError):
    """No installed package provides a service of that name."""


def runnable_services() -> dict[str, Any]:
    """Installed services that can be started: name -> entry point."""
    return {ep.name: ep for ep in entry_points(group="esper.services")}


def load_factory(name: str) -> ServiceFactory:
    """The ``create_service(config_file=None, **overrides)`` factory of service ``name``."""
    found = runnable_services()
    if name in found:
        factory: ServiceFactory = found[name].load()
        return factory
    if name in IN_TRAINER_PROCESS:
        raise UnknownServiceError(f"{name} runs inside the trainer process, not as a service: "
                                  f"{IN_TRAINER_PROCESS[name]} (see services/{name}/README.md)")
    if name in KNOWN_SERVICES:
        raise UnknownServiceError(
            f"service {name!r} has no runnable process yet (see services/{name}/README.md); "
            f"runnable: {', '.join(sorted(found)) or 'none'}"
        )
    raise UnknownServiceError(f"unknown service {name!r}; services: {', '.join(KNOWN_SERVICES)}")


def repo_root() -> Path:
    """The repository root (the folder holding the top-level Makefile), for scripts and configs."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "Makefile").exists() and (parent / "contracts").is_dir():
            return parent
    return Path.cwd()
