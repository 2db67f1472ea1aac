"""Standalone mode: Urza, Tezzeret and Urabrask (and Karn, if asked) in this process, on SQLite, a blob folder
and the memory bus.

:class:`LocalPlatform` starts the three asset services the same way ``esper serve`` does (found by name
through the ``esper.services`` entry points, so the SDK imports none of their code), each behind its own
uvicorn server on 127.0.0.1 with an ephemeral port, all sharing one in-process bus. Seeds then get real
compiled artifacts: a blueprint submitted to Urza is compiled by Tezzeret, gatekept, profiled and tagged
by Urabrask, found by Tamiyo with a tag query and fetched, verified and loaded by Kasmina.

Everything the platform stores lives under ``data_dir`` (``urza.db`` and ``blobs/``), so a second run
reuses the kernels the first one compiled: artifact ids name the toolchain, so a new torch or compiler
gets new artifacts instead of stale ones.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper_contracts import BlueprintIR, CompilationPipeline, KernelStatus, TensorInterface, builtin_blueprints
from esper_kernels import UrzaKernelSource

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

#: Statuses an artifact does not leave on its own.
FINAL_STATUSES = frozenset({KernelStatus.VALIDATED, KernelStatus.REJECTED, KernelStatus.FAILED})
_SERVICES = ("urza", "tezzeret", "urabrask")


class PlatformError(RuntimeError):
    """The standalone platform could not start, or kernels did not become ready in time."""


@dataclass(frozen=True)
class KernelProgress:
    """Where the kernels a run asked for stand: counts by status, and the artifacts that are final."""

    total: int
    by_status: dict[str, int]
    ready: int  # VALIDATED
    failed: list[str]  # "<name> <pipeline>: <reason>" for REJECTED and FAILED artifacts

    @property
    def done(self) -> bool:
        """True when every artifact reached a final status."""
        return self.ready + len(self.failed) >= self.total


class _ServedApp:
    """One service's FastAPI app served by uvicorn in a daemon thread, on an ephemeral port."""

    def __init__(self, name: str, service: Any) -> None:
        import uvicorn

        self.name = name
        self.service = service
        config = uvicorn.Config(service.app, host="127.0.0.1", port=0, log_level="warning", access_log=False,
                                log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"esper-{name}", daemon=True)

    def start(self, timeout_s: float) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise PlatformError(f"{self.name} did not start (see the log above)")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        sockets = [s for server in self.server.servers for s in server.sockets]
        host, port = sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


def _import_compiler_stack() -> None:
    """Import Dynamo, export and Inductor here, on the calling thread, before any worker thread starts.

    Their first import is not safe to race: measured, a compile on Tezzeret's thread failed with
    "module 'torch._dynamo' has no attribute 'exc'" while the kernel loader's warm-up thread was
    importing the same packages. Importing them once up front (a few seconds) removes the race.
    """
    import torch._dynamo
    import torch._inductor
    import torch.export
    import torch.fx.experimental.proxy_tensor  # noqa: F401

    from esper_kernels import prewarm

    prewarm()


class LocalPlatform:
    """Urza + Tezzeret + Urabrask in this process (a context manager; ``start``/``stop`` otherwise).

    ``pipelines``: what every blueprint is compiled for (``standard`` = AOTInductor, native code;
    ``fast`` = a torch.export program, seconds to build). ``sandbox``: Urabrask measures in a child
    process, as in production (a kernel that crashes it is rejected, not the trainer). ``karn``: also serve
    Karn, the generative architect, with these settings (its store under ``data_dir/karn``); None: no Karn.
    """

    def __init__(self, data_dir: Path | str, *, pipelines: Iterable[CompilationPipeline | str] = ("standard",),
                 hardware: str = "cpu", sandbox: bool = True, profile_budget_s: float = 2.0,
                 start_timeout_s: float = 120.0, karn: Mapping[str, Any] | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.pipelines = [CompilationPipeline(p) for p in pipelines]
        self.hardware = hardware
        self.sandbox = sandbox
        self.profile_budget_s = profile_budget_s
        self.start_timeout_s = start_timeout_s
        self.karn_options = dict(karn) if karn is not None else None
        self.bus_url = f"memory://esper-standalone-{uuid.uuid4().hex[:12]}"
        self._served: dict[str, _ServedApp] = {}
        self._source: UrzaKernelSource | None = None
        self._wanted: dict[str, tuple[BlueprintIR, CompilationPipeline]] = {}

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> LocalPlatform:
        """Start Urza, then the compile and validation workers pointed at it."""
        from esper_runtime.registry import UnknownServiceError, load_factory

        self.data_dir.mkdir(parents=True, exist_ok=True)
        _import_compiler_stack()
        try:
            wanted = (*_SERVICES, "karn") if self.karn_options is not None else _SERVICES
            factories = {name: load_factory(name) for name in wanted}
        except UnknownServiceError as exc:
            raise PlatformError(f"standalone mode needs the urza, tezzeret and urabrask packages: {exc}") from exc
        # Development mode: the in-process services' APIs listen on 127.0.0.1 only and are open to this process.
        quiet = {"log_level": "WARNING", "bus_url": self.bus_url, "development": True}
        try:
            self._serve("urza", factories["urza"](
                data_dir=self.data_dir, seed_library=False, pipelines=self.pipelines, hardware=[self.hardware],
                outbox_interval_s=0.5, nack_delay_ms=200, **quiet))
            urza_url = self._served["urza"].url
            self._serve("tezzeret", factories["tezzeret"](urza_url=urza_url, hardware=self.hardware,
                                                          nack_delay_ms=500, **quiet))
            self._serve("urabrask", factories["urabrask"](urza_url=urza_url, hardware=self.hardware,
                                                          sandbox=self.sandbox, budget_s=self.profile_budget_s,
                                                          nack_delay_ms=500, **quiet))
            if self.karn_options is not None:
                self._serve("karn", factories["karn"](**({"urza_url": urza_url, "data_dir": self.data_dir / "karn",
                                                          "nack_delay_ms": 200} | self.karn_options | quiet)))
        except BaseException:
            self.stop()
            raise
        return self

    def _serve(self, name: str, service: Any) -> None:
        served = _ServedApp(name, service)
        served.start(self.start_timeout_s)
        self._served[name] = served
        log.info("%s serving at %s", name, served.url)

    def stop(self) -> None:
        """Stop the workers first (a compile in flight is redelivered next time), then Urza."""
        if self._source is not None:
            self._source.close()
            self._source = None
        for name in reversed([n for n in (*_SERVICES, "karn") if n in self._served]):
            self._served.pop(name).stop()
        from esper_oona.memory_bus import drop_memory_broker

        drop_memory_broker(self.bus_url.removeprefix("memory://"))

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def urza_url(self) -> str:
        """Base URL of the in-process Urza (REST API and OpenAPI docs at ``/docs``)."""
        if "urza" not in self._served:
            raise PlatformError("the platform is not started")
        return self._served["urza"].url

    @property
    def karn_url(self) -> str:
        """Base URL of the in-process Karn (started with ``karn=...``)."""
        if "karn" not in self._served:
            raise PlatformError("Karn is not part of this platform (pass karn={} to LocalPlatform)")
        return self._served["karn"].url

    def kernel_source(self, cache_mb: float = 256.0) -> UrzaKernelSource:
        """The KernelSource (for Kasmina) and KernelSelector (for Tamiyo) backed by this platform's Urza."""
        if self._source is None:
            self._source = UrzaKernelSource(self.urza_url, cache_mb=cache_mb)
        return self._source

    # -- kernels ------------------------------------------------------------------------------------------
    def submit(self, blueprints: Iterable[BlueprintIR]) -> list[str]:
        """Submit blueprints (idempotent per IR hash); returns the keys of the artifacts to wait for."""
        client = self.kernel_source().client
        keys = []
        for ir in blueprints:
            record = client.submit_blueprint(ir)
            for pipeline in self.pipelines:
                key = f"{record.blueprint_id}/{pipeline.value}"
                self._wanted[key] = (ir, pipeline)
                keys.append(key)
        return keys

    def submit_builtins(self, interfaces: Iterable[TensorInterface]) -> list[str]:
        """Submit every built-in blueprint family for each interface (a seed slot's chunk shape)."""
        unique = {(i.layout, i.features): i for i in interfaces}
        return self.submit(ir for iface in unique.values() for ir in builtin_blueprints(iface))

    def progress(self, keys: Iterable[str] | None = None) -> KernelProgress:
        """The status of the artifacts ``keys`` names (default: all submitted so far), one request per blueprint."""
        client = self.kernel_source().client
        by_status: dict[str, int] = {}
        ready, failed = 0, []
        records: dict[str, Any] = {}
        wanted = {k: self._wanted[k] for k in keys} if keys is not None else dict(self._wanted)
        for key, (ir, pipeline) in wanted.items():
            blueprint_id = key.split("/")[0]
            if blueprint_id not in records:
                records[blueprint_id] = client.blueprint(blueprint_id)
            found = [a for a in records[blueprint_id].artifacts
                     if a.pipeline is pipeline and a.hardware == self.hardware]
            status = found[0].status if found else KernelStatus.PENDING
            by_status[status.value] = by_status.get(status.value, 0) + 1
            if status is KernelStatus.VALIDATED:
                ready += 1
            elif status in FINAL_STATUSES:
                art = found[0]
                reason = art.error or (art.validation.rejection_reason if art.validation else None) or status.value
                failed.append(f"{ir.name} {pipeline.value}: {reason}")
        return KernelProgress(len(wanted), by_status, ready, failed)

    def wait_ready(self, keys: Iterable[str] | None = None, *, timeout_s: float = 1800.0, poll_s: float = 0.5,
                   on_progress: Callable[[KernelProgress], None] | None = None) -> KernelProgress:
        """Block until the artifacts ``keys`` names (default: all) are VALIDATED, REJECTED or FAILED.

        Raises PlatformError on timeout.
        """
        keys = list(keys) if keys is not None else None
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.progress(keys)
            if on_progress is not None:
                on_progress(state)
            if state.done:
                return state
            if time.monotonic() > deadline:
                raise PlatformError(f"kernels not ready after {timeout_s:.0f} s: {state.by_status}")
            time.sleep(poll_s)


def slot_interfaces(model: Any) -> list[TensorInterface]:
    """The chunk interface of every seed slot of a wrapped model (what the platform must compile kernels for)."""
    from .kasmina import kasmina_layers

    return [layer.chunks.interface(i) for layer in kasmina_layers(model).values()
            for i in range(len(layer.chunks.bounds))]


def prepare_kernels(platform: LocalPlatform, interfaces: list[TensorInterface], console: Console | None = None,
                    ) -> KernelProgress:
    """Submit the built-in blueprints for ``interfaces`` and wait (with a progress bar) until each is final."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .tolaria import progress_bar_wanted

    console = console or Console(highlight=False)

    start = time.perf_counter()
    keys = platform.submit_builtins(interfaces)
    pipelines = ", ".join(p.value for p in platform.pipelines)
    with Progress(TextColumn("[bold]kernels[/bold] {task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=console, disable=not progress_bar_wanted()) as bar:
        job = bar.add_task(f"({pipelines}: compile, gatekeep, profile)", total=len(keys))

        def show(state: KernelProgress) -> None:
            waiting = ", ".join(f"{k.lower()} {v}" for k, v in sorted(state.by_status.items()))
            bar.update(job, completed=state.ready + len(state.failed), description=f"({pipelines}) {waiting}")

        state = platform.wait_ready(keys, on_progress=show)
    for reason in state.failed:
        console.print(f"[yellow]kernel not available:[/yellow] {reason}")
    console.print(f"kernels: {state.ready} of {state.total} compiled ({pipelines}), validated and tagged in Urza "
                  f"({platform.urza_url}) in {time.perf_counter() - start:.0f} s")
    return state
