"""Local development infrastructure: Pulsar, PostgreSQL, S3 (SeaweedFS) and Prometheus.

A thin Python face over the shell scripts in ``infra/`` at the repository root, which start the
real services as plain processes on 127.0.0.1 and keep their state under ``.cache/infra/``.
Used by ``esper infra up|down|status`` and by the root ``conftest.py`` fixtures.

Ports and credentials follow the same environment variables as the scripts
(``ESPER_PULSAR_PORT``, ``ESPER_PULSAR_HTTP_PORT``, ``ESPER_PG_PORT``, ``ESPER_S3_PORT``,
``ESPER_S3_ACCESS_KEY``, ``ESPER_S3_SECRET_KEY``, ``ESPER_PROM_PORT``). The repository root is
found by walking up from this file, or taken from ``ESPER_REPO_ROOT``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "SERVICES",
    "InfraError",
    "down",
    "endpoints",
    "is_running",
    "log_file",
    "log_tail",
    "prometheus_reload",
    "prometheus_targets_dir",
    "repo_root",
    "s3_config",
    "state_dir",
    "status",
    "up",
]

SERVICES: tuple[str, ...] = ("pulsar", "postgres", "s3", "prometheus")

HOST = "127.0.0.1"

_DEFAULT_PORTS: dict[str, int] = {
    "ESPER_PULSAR_PORT": 16650,
    "ESPER_PULSAR_HTTP_PORT": 18080,
    "ESPER_PG_PORT": 15432,
    "ESPER_S3_PORT": 8333,
    "ESPER_PROM_PORT": 19090,
}


class InfraError(RuntimeError):
    """A local service could not be installed, started, stopped or queried."""


def repo_root() -> Path:
    """Return the repository root: ``$ESPER_REPO_ROOT``, else the first parent holding ``infra/infra.sh``."""
    env = os.environ.get("ESPER_REPO_ROOT")
    if env:
        root = Path(env).expanduser().resolve()
        if not (root / "infra" / "infra.sh").is_file():
            raise InfraError(f"ESPER_REPO_ROOT={env} has no infra/infra.sh")
        return root
    for parent in Path(__file__).resolve().parents:
        if (parent / "infra" / "infra.sh").is_file():
            return parent
    raise InfraError("cannot find the repository root (no infra/infra.sh above this file); set ESPER_REPO_ROOT")


def state_dir() -> Path:
    """Return the directory holding the services' state (``.cache/infra`` unless overridden)."""
    return _state_dir()


def _state_dir() -> Path:
    explicit = os.environ.get("ESPER_INFRA_STATE_DIR")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("ESPER_CACHE_DIR")
    return (Path(cache) if cache else repo_root() / ".cache") / "infra"


def _port(variable: str) -> int:
    raw = os.environ.get(variable, "")
    if not raw:
        return _DEFAULT_PORTS[variable]
    try:
        return int(raw)
    except ValueError:
        raise InfraError(f"{variable}={raw!r} is not a port number") from None


def _check_names(names: Sequence[str] | None) -> list[str]:
    if isinstance(names, str):  # a bare string is a Sequence[str] too: treat it as one name
        names = [names]
    if not names:
        return list(SERVICES)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise InfraError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    return list(dict.fromkeys(names))


def _bash() -> str:
    found = shutil.which("bash")
    if found is None:
        raise InfraError("bash is required to run the infra/ scripts")
    return found


def _script(name: str) -> Path:
    return repo_root() / "infra" / f"{name}.sh"


def log_file(name: str) -> Path:
    """Return the path of a service's log file (``.cache/infra/<name>/<name>.log``)."""
    _check_names([name])
    return _state_dir() / name / f"{name}.log"


def log_tail(name: str, lines: int = 60) -> str:
    """Return the last ``lines`` lines of a service's log ('' when there is none)."""
    path = log_file(name)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failure(action: str, names: list[str], output: str, since: float) -> InfraError:
    parts = [f"infra {action} failed for {' '.join(names)}"]
    if output.strip():
        parts.append(output.rstrip())
    if action == "up":
        for name in names:
            path = log_file(name)
            try:
                fresh = path.stat().st_mtime >= since - 1  # written by this attempt, not an old run
            except OSError:
                fresh = False
            if fresh and str(path) not in output and not is_running(name):
                tail = log_tail(name, 40)
                if tail:
                    parts.append(f"--- last lines of {path} ---\n{tail}")
    return InfraError("\n".join(parts))


def _run(action: str, names: list[str], *, capture: bool) -> None:
    cmd = [_bash(), str(_script("infra")), action, *names]
    since = time.time()
    proc = subprocess.run(
        cmd,
        cwd=repo_root(),
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
    )
    if proc.returncode != 0:
        raise _failure(action, names, proc.stdout or "", since)


def up(names: Sequence[str] | None = None, *, quiet: bool = False) -> None:
    """Install what is missing, start the named services (all by default) and wait until each is ready.

    Services that already run are left alone. Progress lines go to the terminal unless ``quiet``.
    Raises :class:`InfraError` (with the script output and the log tail) when a service fails.
    """
    _run("up", _check_names(names), capture=quiet)


def down(names: Sequence[str] | None = None, *, quiet: bool = False) -> None:
    """Stop the named services (all by default) and delete their throwaway data.

    Services that these scripts did not start are left running. Raises :class:`InfraError` on failure.
    """
    _run("down", _check_names(names), capture=quiet)


def is_running(name: str) -> bool:
    """Return True when the service answers like a ready instance on its port (started by us or not)."""
    _check_names([name])
    proc = subprocess.run(
        [_bash(), str(_script(name)), "status"],
        cwd=repo_root(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc.returncode == 0


def status() -> dict[str, bool]:
    """Return ``{service: running}`` for every service in :data:`SERVICES`."""
    return {name: is_running(name) for name in SERVICES}


def s3_config() -> dict[str, str]:
    """Return the S3 settings for boto3: ``endpoint_url``, ``access_key``, ``secret_key``, ``region``.

    Use path-style addressing (``botocore.config.Config(s3={"addressing_style": "path"})``).
    """
    return {
        "endpoint_url": f"http://{HOST}:{_port('ESPER_S3_PORT')}",
        "access_key": os.environ.get("ESPER_S3_ACCESS_KEY", "esper"),
        "secret_key": os.environ.get("ESPER_S3_SECRET_KEY", "esper-secret"),
        "region": "us-east-1",
    }


def endpoints() -> dict[str, str]:
    """Return the URLs of the local services (whether or not they are running).

    Keys: ``pulsar_url``, ``pulsar_admin_url``, ``postgres_url``, ``s3_endpoint_url``, ``prometheus_url``.
    """
    return {
        "pulsar_url": f"pulsar://{HOST}:{_port('ESPER_PULSAR_PORT')}",
        "pulsar_admin_url": f"http://{HOST}:{_port('ESPER_PULSAR_HTTP_PORT')}",
        "postgres_url": f"postgresql+psycopg://esper:esper@{HOST}:{_port('ESPER_PG_PORT')}/esper",
        "s3_endpoint_url": s3_config()["endpoint_url"],
        "prometheus_url": f"http://{HOST}:{_port('ESPER_PROM_PORT')}",
    }


def prometheus_targets_dir() -> Path:
    """The folder whose ``*.json`` file_sd files the local Prometheus scrapes as job ``esper``."""
    return _state_dir() / "prometheus" / "targets"


def prometheus_reload() -> None:
    """Rewrite the local Prometheus's configuration and rules from the repository and have it reload them.

    For a Prometheus started by older scripts, without the ``esper`` job or the alert rules.
    """
    proc = subprocess.run([_bash(), str(_script("prometheus")), "reload"], cwd=repo_root(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise InfraError(f"reloading prometheus failed:\n{proc.stdout}")
