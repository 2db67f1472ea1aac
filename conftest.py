"""Workspace-wide pytest fixtures for integration tests against real local services.

Session-scoped fixtures (each starts its service only when a selected test asks for it):

* ``pulsar_url`` (``pulsar://127.0.0.1:16650``) and ``pulsar_admin_url`` (``http://127.0.0.1:18080``)
* ``postgres_url`` (``postgresql+psycopg://esper:esper@127.0.0.1:15432/esper``)
* ``s3_config`` (``{"endpoint_url", "access_key", "secret_key", "region"}``; use path-style addressing)
* ``prometheus_url`` (``http://127.0.0.1:19090``)
* ``prometheus_targets``: adds services of the test to that Prometheus's scrape job ``esper`` (file_sd),
  removed when the test ends; see :class:`PrometheusTargets`

A service that already runs (``bash infra/infra.sh up``, or another session) is reused and left
running. Otherwise the fixture starts it with the ``infra/`` scripts and stops it (deleting its
data) when the session ends, unless another pytest session still uses it (the last one out stops
it). A service that cannot start fails the test with the script output and the service's log tail:
nothing is skipped.

Per-test fixture without any service:

* ``memory_bus_url``: a ``memory://`` bus of the test's own, dropped afterwards
  (``esper_oona.testing`` holds the other bus test helpers: ``Collector``, ``Recorder``, ``wait_for``)

Before the first test runs, missing tools (Java, the Pulsar classpath, PostgreSQL, SeaweedFS,
Prometheus) are installed once for the selected tests, outside any per-test timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

_ROOT = Path(__file__).resolve().parent

# Services under test run in development mode (esper_runtime.auth): their APIs are open unless a test gives
# them keys, and the tests of production mode remove the variable. Set before any settings are built.
os.environ.setdefault("ESPER_DEVELOPMENT", "true")

# Which services each public fixture needs.
_FIXTURE_SERVICES: dict[str, str] = {
    "pulsar_url": "pulsar",
    "pulsar_admin_url": "pulsar",
    "postgres_url": "postgres",
    "s3_config": "s3",
    "prometheus_url": "prometheus",
}

_infra_module: ModuleType | None = None


def _infra() -> ModuleType:
    """Load ``esper_devtools/infra.py`` by path: stdlib only, so this works even when the
    ``esper_devtools`` package (or one of its dependencies) is not importable."""
    global _infra_module
    if _infra_module is None:
        path = _ROOT / "libs" / "devtools" / "esper_devtools" / "infra.py"
        spec = importlib.util.spec_from_file_location("_esper_conftest_infra", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _infra_module = module
    return _infra_module


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Install missing service tools once, before any test (and its timeout) starts.

    Runs after ``-m``/``-k`` deselection, so only the services the selected tests need are
    considered. A failure here is only reported: the fixture retries and fails the test.
    """
    needed = sorted(
        {_FIXTURE_SERVICES[f] for item in items for f in getattr(item, "fixturenames", ()) if f in _FIXTURE_SERVICES}
    )
    if not needed:
        return
    import subprocess

    script = _ROOT / "infra" / "install-deps.sh"
    check = subprocess.run(["bash", str(script), "--check", "--quiet", *needed], check=False)
    if check.returncode == 0:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"esper: installing local service tools for {', '.join(needed)} (one time)...")
    done = subprocess.run(["bash", str(script), *needed], check=False)
    if done.returncode != 0 and reporter is not None:
        reporter.write_line(f"esper: infra/install-deps.sh failed (rc={done.returncode}); the fixtures will retry")


@contextlib.contextmanager
def _fixture_lock(name: str) -> Iterator[Path]:
    """Serialize fixture bookkeeping for one service across concurrent pytest sessions."""
    directory = Path(_infra().state_dir()) / name
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{name}.fixtures.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _live_users(users: Path) -> list[Path]:
    """Registered sessions whose process still exists (stale entries are removed)."""
    alive = []
    for entry in users.glob("*"):
        try:
            os.kill(int(entry.name), 0)
        except (ValueError, ProcessLookupError):
            entry.unlink(missing_ok=True)
            continue
        except PermissionError:
            pass  # exists, owned by another user
        alive.append(entry)
    return alive


def _service(name: str) -> Iterator[None]:
    """Make ``name`` available for this session.

    Bookkeeping under ``.cache/infra/<name>/``: ``fixture-users/<pid>`` marks each pytest session
    using the service, ``fixture-owned`` that a fixture (not a person) started it. The last session
    to leave stops a fixture-owned service; one started by hand (``infra.sh up``) is never stopped.
    """
    infra = _infra()
    me = str(os.getpid())
    with _fixture_lock(name) as directory:
        users = directory / "fixture-users"
        owned = directory / "fixture-owned"
        users.mkdir(exist_ok=True)
        if not infra.is_running(name):
            try:
                infra.up([name], quiet=True)
            except infra.InfraError as exc:
                pytest.fail(f"local service {name!r} could not be started:\n{exc}", pytrace=False)
            owned.touch()
        (users / me).touch()
    try:
        yield
    finally:
        with _fixture_lock(name) as directory:
            users = directory / "fixture-users"
            owned = directory / "fixture-owned"
            (users / me).unlink(missing_ok=True)
            if owned.exists() and not _live_users(users):
                owned.unlink(missing_ok=True)
                try:
                    infra.down([name], quiet=True)
                except infra.InfraError as exc:
                    # Report, but do not turn a passing session red because cleanup stumbled.
                    sys.stderr.write(f"\nesper: stopping {name} failed:\n{exc}\n")


@pytest.fixture(scope="session")
def _esper_pulsar() -> Iterator[None]:
    yield from _service("pulsar")


@pytest.fixture(scope="session")
def _esper_postgres() -> Iterator[None]:
    yield from _service("postgres")


@pytest.fixture(scope="session")
def _esper_s3() -> Iterator[None]:
    yield from _service("s3")


@pytest.fixture(scope="session")
def _esper_prometheus() -> Iterator[None]:
    yield from _service("prometheus")


@pytest.fixture(scope="session")
def pulsar_url(_esper_pulsar: None) -> str:
    """Binary-protocol URL of a running Pulsar standalone broker."""
    return str(_infra().endpoints()["pulsar_url"])


@pytest.fixture(scope="session")
def pulsar_admin_url(_esper_pulsar: None) -> str:
    """Admin REST URL of the same broker (``/admin/v2/...``)."""
    return str(_infra().endpoints()["pulsar_admin_url"])


@pytest.fixture(scope="session")
def postgres_url(_esper_postgres: None) -> str:
    """SQLAlchemy URL (psycopg 3 driver) of database ``esper`` owned by role ``esper`` (CREATEDB)."""
    return str(_infra().endpoints()["postgres_url"])


@pytest.fixture(scope="session")
def s3_config(_esper_s3: None) -> dict[str, str]:
    """S3 endpoint and credentials: ``endpoint_url``, ``access_key``, ``secret_key``, ``region``."""
    return dict(_infra().s3_config())


@pytest.fixture(scope="session")
def prometheus_url(_esper_prometheus: None) -> str:
    """Base URL of a running Prometheus that scrapes itself."""
    return str(_infra().endpoints()["prometheus_url"])


class PrometheusTargets:
    """Scrape targets of one test, written as a file_sd file the local Prometheus watches (job ``esper``)."""

    def __init__(self, prometheus_url: str, directory: Path) -> None:
        import uuid

        self.url = prometheus_url
        self.file = directory / f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._targets: list[dict[str, object]] = []

    def add(self, service: str, port: int, host: str = "127.0.0.1") -> str:
        """Scrape ``host:port`` (labelled ``service``) from now on; returns the ``instance`` label it gets."""
        import json

        instance = f"{host}:{port}"
        self._targets.append({"targets": [instance], "labels": {"service": service}})
        tmp = self.file.with_suffix(".tmp")  # written whole, then renamed: Prometheus never reads half a file
        tmp.write_text(json.dumps(self._targets))
        tmp.replace(self.file)
        return instance

    def remove_all(self) -> None:
        """Stop scraping this test's targets (Prometheus marks their series stale)."""
        self.file.unlink(missing_ok=True)


@pytest.fixture
def prometheus_targets(prometheus_url: str) -> Iterator[PrometheusTargets]:
    """Add the test's services to the local Prometheus's ``esper`` job; they leave it when the test ends.

    A Prometheus started by older scripts (no ``esper`` job, no alert rules) is reconfigured first.
    """
    import json
    import urllib.request

    infra = _infra()
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/status/config", timeout=10) as answer:
        config = json.load(answer)["data"]["yaml"]
    if "targets/*.json" not in config:
        try:
            infra.prometheus_reload()
        except infra.InfraError as exc:
            pytest.fail(str(exc), pytrace=False)
    directory = Path(infra.prometheus_targets_dir())
    directory.mkdir(parents=True, exist_ok=True)
    targets = PrometheusTargets(prometheus_url, directory)
    try:
        yield targets
    finally:
        targets.remove_all()


@pytest.fixture
def postgres_database_url(postgres_url: str) -> Iterator[str]:
    """A throwaway, empty database on the real PostgreSQL server; dropped (connections and all) afterwards."""
    import uuid

    from sqlalchemy import create_engine, make_url, text  # imported here: see memory_bus_url

    server = make_url(postgres_url).set(drivername="postgresql+psycopg")
    name = f"esper_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture
def memory_bus_url() -> Iterator[str]:
    """A ``memory://`` URL whose broker belongs to this test only; dropped (with its messages) afterwards."""
    from esper_oona.testing import memory_bus  # imported here: this file must load without workspace packages

    with memory_bus() as url:
        yield url
