"""One training run from one YAML file: standalone, or on the distributed platform, by configuration.

``esper train CONFIG`` (and :func:`run_training`) reads the run config, builds the task and the host
(``tolaria.task`` and ``model``, by name or import path), wraps the host and trains it under Tamiyo:

* **no ``platform`` section** — the embedded standalone platform runs in this process (Urza on SQLite and
  a folder, Tezzeret, Urabrask, one in-process bus): the built-in blueprints for the model's seed slots are
  compiled and validated (kept under ``<run_dir>/platform``, so only the first run compiles) and an
  in-process heuristic Tamiyo chooses among the VALIDATED kernels. ``kernels="eager"`` skips the platform.
* **a ``platform`` section** — the trainer joins running services: Kasmina fetches kernels from Urza over
  REST, Narset's workers live in this process (the ``narset`` controller of the ``esper.controllers``
  entry-point group, from esper-narset-worker) and talk to the coordinator and the Tamiyo service over
  the bus. Each URL is checked first; one that does not answer stops the run within
  ``connect_timeout_s`` with an error naming it, before anything is written.

The run directory gets ``config.yaml`` (the resolved config, for ``--resume``), checkpoints, metrics and
events, the evolved model with ``lineage.json``, and ``report.html``. Exit codes: :data:`EXIT_CODES`.

**Several ranks** (``esper train CONFIG --nproc-per-node N``, or ``torchrun ... -m esper.cli CONFIG``): every
rank checks that it was started with the same config and the same host as rank 0, then trains its shard of
the task under DDP (tolaria/distributed.py). Rank 0 alone runs the embedded platform or joins the real one
(the controller) and writes the run directory; the other ranks load the same kernels, from rank 0's Urza
(standalone) or the platform's. A rank that dies stops the others (exit 5); ``--resume`` on every rank
continues from the last checkpoint.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import httpx
import torch
import torch.distributed as dist
import yaml
from rich.console import Console
from torch import nn

from esper_contracts import KernelStatus
from esper_kernels import KernelSource, LocalKernelLibrary, UrzaKernelSource, local_hardware, prewarm
from esper_policy import ControlPolicy, build_policy

from .config import ConfigError, EsperConfig, PlatformConfig, TolariaConfig, load_config
from .data import Batches
from .kasmina import wrap
from .lineage import save_model
from .tasks import TaskData, import_object, load_task
from .tolaria import TolariaTrainer, TrainingDivergedError, evaluate
from .tolaria.distributed import (
    FollowerPolicy,
    agree_on_start,
    broadcast_object,
    is_distributed,
    is_peer_failure,
    is_rank_zero,
    model_signature,
    start_from_env,
    stop,
)

T = TypeVar("T")

#: ``esper train`` exit codes.
EXIT_OK, EXIT_FAILED, EXIT_BAD_CONFIG, EXIT_UNREACHABLE, EXIT_DIVERGED, EXIT_RANK_FAILED = 0, 1, 2, 3, 4, 5
EXIT_CODES = {
    EXIT_OK: "the run finished",
    EXIT_FAILED: "an unexpected error (the message says which)",
    EXIT_BAD_CONFIG: "the config (or the model or task it names) cannot be used, or the ranks were started with "
                     "different ones; nothing was written",
    EXIT_UNREACHABLE: "a platform URL did not answer within platform.connect_timeout_s; nothing was written",
    EXIT_DIVERGED: "training diverged: more rollbacks than tolaria.max_rollbacks allows",
    EXIT_RANK_FAILED: "several ranks: another rank failed or stopped answering; continue with --resume RUN_DIR",
}
CONFIG_FILE = "config.yaml"


class PlatformUnreachableError(RuntimeError):
    """A platform URL (bus, Urza or the Narset coordinator) did not answer in time; the message names it."""


class RankFailedError(RuntimeError):
    """Several ranks: another rank died or stopped answering mid-run; ``run_dir`` is what to ``--resume``."""

    def __init__(self, run_dir: Path, cause: BaseException) -> None:
        self.run_dir = run_dir
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"another rank failed or stopped answering ({first[:300]})")


def _attempt(step: Callable[[], T]) -> T | Exception:
    """``step()``, or the configuration or platform error that stopped it (for the ranks to agree on)."""
    try:
        return step()
    except (ConfigError, PlatformUnreachableError) as exc:
        return exc


@dataclass
class TrainResult:
    """What one run produced."""

    run_dir: Path
    test_accuracy: float
    test_loss: float
    parameters: int
    outcomes: dict[str, int]
    seconds: float


def default_host(task: TaskData) -> nn.Module:
    """A small ReLU MLP sized to ``task`` (used when the config names no ``model``)."""
    return nn.Sequential(nn.Linear(task.num_features, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, task.num_classes))


def build_host(config: EsperConfig, task: TaskData) -> nn.Module:
    """The host the config names (``model: package.module:factory``, called with the task) or the default."""
    if config.model is None:
        return default_host(task)
    factory = import_object(config.model, "model")
    model = factory(task)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model: {config.model}(task) returned {type(model).__name__}, not a torch nn.Module")
    return model


# ------------------------------------------------------------------------------------------ the platform


def check_platform(platform: PlatformConfig) -> None:
    """Raise PlatformUnreachableError naming the first URL that does not answer within ``connect_timeout_s``."""
    deadline = time.monotonic() + platform.connect_timeout_s
    bus = urlparse(platform.bus_url)
    if bus.scheme.startswith("pulsar"):
        _wait(deadline, platform.bus_url, lambda: socket.create_connection(
            (bus.hostname or "localhost", bus.port or 6650), timeout=2).close())
    for name, url in (("Urza", platform.urza_url), ("the Narset coordinator", platform.coordinator_url)):
        _wait(deadline, url, _health_probe(url), name)


def _health_probe(url: str) -> Callable[[], None]:
    def probe() -> None:
        httpx.get(url.rstrip("/") + "/healthz", timeout=2).raise_for_status()
    return probe


def _wait(deadline: float, url: str, probe: Callable[[], None], name: str = "the bus") -> None:
    last = ""
    while True:
        try:
            probe()
            return
        except (OSError, httpx.HTTPError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise PlatformUnreachableError(f"{name} at {url} did not answer ({last})")
        time.sleep(0.5)


def join_platform(model: nn.Module, platform: PlatformConfig, run_id: str) -> ControlPolicy:
    """Narset's in-process workers as the run's controller (the ``narset`` entry point of ``esper.controllers``)."""
    found = [ep for ep in entry_points(group="esper.controllers") if ep.name == "narset"]
    if not found:
        raise ConfigError("platform: joining a platform needs esper-narset-worker installed (it provides the "
                          "in-process Narset workers); remove the platform section to train standalone")
    controller: ControlPolicy = found[0].load()(model=model, platform=platform, run_id=run_id)
    return controller


def urza_token(platform: PlatformConfig) -> str | None:
    """Urza's bearer token from the environment variable the config names (never from the file)."""
    return platform.urza_token()


# ---------------------------------------------------------------------------------------------- the run


def run_training(config: EsperConfig, *, resume: Path | None = None, kernels: str = "compiled",
                 epochs: int | None = None, quiet: bool = False, console: Console | None = None) -> TrainResult:
    """Train one run as ``config`` says (see the module docstring); ``resume`` continues a run directory.

    Raises ConfigError (bad config, model or task), PlatformUnreachableError, TrainingDivergedError.
    """
    console = console or Console(highlight=False)
    say = console.print
    tolaria = config.tolaria
    if epochs is not None:
        tolaria = tolaria.model_copy(update={"epochs": epochs})
    if resume is not None:
        tolaria = tolaria.model_copy(update={"run_dir": str(resume.parent), "run_id": resume.name})
    elif tolaria.run_id is None:  # rank 0's clock names the run on every rank
        tolaria = tolaria.model_copy(update={"run_id": broadcast_object(f"train-{time.strftime('%Y%m%d-%H%M%S')}")})
    if quiet:
        tolaria = tolaria.model_copy(update={"progress_bar": False, "log_lines": False})
    if config.platform is not None and tolaria.hardware is None:  # the platform's kernels must run on this device
        tolaria = tolaria.model_copy(update={"hardware": local_hardware(torch.device(tolaria.device).type)})
    task = load_task(tolaria.task or "spirals", tolaria.seed)
    torch.manual_seed(tolaria.seed)
    host = agree_on_start("host model", _attempt(lambda: build_host(config, task)), describe=model_signature,
                          errors=(ConfigError,))
    if config.platform is not None:
        platform = config.platform
        agree_on_start("platform", _attempt(lambda: check_platform(platform)), describe=lambda _: None,
                       errors=(PlatformUnreachableError,))
    assert tolaria.run_id is not None
    run_dir = Path(tolaria.run_dir) / tolaria.run_id
    rank, world = (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)
    closers: list[Callable[[], None]] = []
    try:
        model, controller = _assemble_rank(config, host, kernels, run_dir, tolaria.run_id, closers, console)
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            if resume is None:
                (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        trainer = TolariaTrainer(
            model, controller, tolaria,
            train_data=Batches(task.train, tolaria.batch_size, seed=tolaria.seed, rank=rank, world_size=world),
            val_data=Batches(task.val, 1024, shuffle=False, rank=rank, world_size=world))
        if resume is not None:
            epoch = trainer.resume()
            if rank == 0:
                say(f"resuming {run_dir} after epoch {epoch}")
        start = time.perf_counter()
        model, history = trainer.train()
        seconds = time.perf_counter() - start
    except Exception as exc:
        if is_distributed() and is_peer_failure(exc):
            raise RankFailedError(run_dir, exc) from exc
        raise
    finally:
        for close in reversed(closers):
            close()
    test_loss, test_acc = evaluate(model, Batches(task.test, 1024, shuffle=False))
    last = history.epochs[-1] if history.epochs else {}
    result = TrainResult(run_dir=run_dir, test_accuracy=test_acc, test_loss=test_loss,
                         parameters=int(last.get("total_params", 0)), outcomes=trainer.lineage.summary(),
                         seconds=seconds)
    summary = {"task": task.name, "esper_test_accuracy": test_acc, "esper_parameters": result.parameters,
               "outcomes": result.outcomes, "seconds": seconds}
    controller_stats = getattr(controller, "stats", None)
    if callable(controller_stats) and controller_stats() is not None:
        summary["controller"] = controller_stats()  # a learned policy's veto count, reported with the run
    if rank != 0:  # rank 0 writes the run directory
        return result
    save_model(model, run_dir, extra={"task": task.name, "summary": summary})
    from .report import write_report

    write_report(run_dir, task=task.name, history=history, lineage=trainer.lineage, summary=summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return result


def _assemble_rank(config: EsperConfig, host: nn.Module, kernels: str, run_dir: Path, run_id: str,
                   closers: list[Callable[[], None]], console: Console) -> tuple[nn.Module, ControlPolicy]:
    """The wrapped model and controller of this rank: rank 0 assembles the run's mode (and tells the others
    where its kernels are, or why it failed); the other ranks load the same kernels and never decide."""
    if is_rank_zero():
        assembled = _attempt(lambda: _assemble(config, host, kernels, run_dir, run_id, closers, console))
        kernel_url = broadcast_object(assembled if isinstance(assembled, Exception) else assembled[2])
        if isinstance(assembled, Exception):
            raise assembled
        return assembled[0], assembled[1]
    kernel_url = broadcast_object(None)
    if isinstance(kernel_url, Exception):
        raise type(kernel_url)(f"rank 0 could not start: {kernel_url}")
    platform = config.platform
    source: KernelSource
    if kernel_url is None:
        source = LocalKernelLibrary(cache_mb=config.kasmina.kernel_cache_mb)
    else:
        prewarm()  # on this thread: the source's warm-up thread would race the trainer's first import of Dynamo
        token = urza_token(platform) if platform is not None else None
        urza = UrzaKernelSource(kernel_url, cache_mb=config.kasmina.kernel_cache_mb, token=token)
        closers.append(urza.close)
        source = urza
    return wrap(host, config.kasmina, source), FollowerPolicy()


def _assemble(config: EsperConfig, host: nn.Module, kernels: str, run_dir: Path, run_id: str,
              closers: list[Callable[[], None]], console: Console) -> tuple[nn.Module, ControlPolicy, str | None]:
    """The wrapped model, its controller, and the Urza URL its kernels come from (None: the built-in library)
    for the run's mode."""
    say = console.print
    platform = config.platform
    if platform is not None:
        prewarm()  # here, not on the source's warm-up thread: it would race the trainer's first import of Dynamo
        source = UrzaKernelSource(platform.urza_url, cache_mb=config.kasmina.kernel_cache_mb,
                                  token=urza_token(platform))
        closers.append(source.close)
        model = wrap(host, config.kasmina, source)
        controller = join_platform(model, platform, run_id)
        close = getattr(controller, "close", None)
        if close is not None:
            closers.append(close)
        return model, controller, platform.urza_url
    if kernels == "eager":
        library: KernelSource = LocalKernelLibrary(cache_mb=config.kasmina.kernel_cache_mb)
        model = wrap(host, config.kasmina, library)
        return model, build_policy(config.tamiyo, library), None  # type: ignore[arg-type]
    from .standalone import LocalPlatform, PlatformError, prepare_kernels, slot_interfaces

    try:
        local = LocalPlatform(run_dir.parent / "platform").start()
    except PlatformError as exc:
        raise ConfigError(f"{exc}; train with --kernels eager, or join a platform (a platform: section)") from None
    closers.append(local.stop)
    say(f"standalone platform (Urza, Tezzeret, Urabrask) in {run_dir.parent / 'platform'}")
    probe = wrap(copy.deepcopy(host), config.kasmina, LocalKernelLibrary())  # its slots, without wrapping twice
    ready = prepare_kernels(local, slot_interfaces(probe), console)
    if ready.ready == 0:
        raise ConfigError(f"no kernel compiled and validated for this model ({'; '.join(ready.failed)}); "
                          f"try --kernels eager")
    source = local.kernel_source(config.kasmina.kernel_cache_mb)
    model = wrap(host, config.kasmina, source)
    tamiyo = config.tamiyo.model_copy(update={"kernel_status": KernelStatus.VALIDATED})
    return model, build_policy(tamiyo, source), local.urza_url


def _who() -> str:
    """"rank N: " when several ranks print, so their lines can be told apart."""
    return f"rank {dist.get_rank()}: " if is_distributed() else ""


def _read_config(config_path: Path | None, resume: Path | None) -> EsperConfig:
    if resume is not None:
        return load_config(resume / CONFIG_FILE)
    if config_path is not None:
        return load_config(config_path)
    raise ConfigError("esper train needs a CONFIG file, or --resume RUN_DIR")


def main(config_path: Path | None, resume: Path | None = None, kernels: str = "compiled",
         epochs: int | None = None, quiet: bool = False, console: Console | None = None) -> int:
    """The ``esper train`` command: run, print a summary line, return an exit code (see :data:`EXIT_CODES`)."""
    console = console or Console(highlight=False)
    say = functools.partial(console.print, markup=False)  # messages quote paths and errors, not markup
    from esper_runtime.tracing import configure_tracing, shutdown_tracing

    # The trainer's spans (boundaries, transitions, the packets it sends) join the platform's traces when an
    # OTLP endpoint is set, exactly like a service's (ESPER_OTLP_ENDPOINT); off otherwise.
    configure_tracing("esper-trainer", otlp_endpoint=os.environ.get("ESPER_OTLP_ENDPOINT") or None)
    loaded = _attempt(lambda: _read_config(config_path, resume))
    tolaria = loaded.tolaria if isinstance(loaded, EsperConfig) else TolariaConfig()
    try:
        # Under torchrun or --nproc-per-node: join the other ranks, then check they all read the same config.
        start_from_env(tolaria.collective_timeout_s, tolaria.device)
        config = agree_on_start("run config", loaded, describe=lambda c: c.model_dump(mode="json"),
                                errors=(ConfigError,))
        result = run_training(config, resume=resume, kernels=kernels, epochs=epochs, quiet=quiet, console=console)
        leader = is_rank_zero()  # rank 0 reports (asked before the group is left below)
    except ConfigError as exc:
        say(f"error: {_who()}{exc}")
        return EXIT_BAD_CONFIG
    except PlatformUnreachableError as exc:
        say(f"error: {_who()}platform unreachable: {exc}")
        return EXIT_UNREACHABLE
    except TrainingDivergedError as exc:
        say(f"error: {_who()}training diverged: {exc}")
        return EXIT_DIVERGED
    except RankFailedError as exc:
        say(f"error: {_who()}{exc}; continue every rank with --resume {exc.run_dir}")
        return EXIT_RANK_FAILED
    finally:
        stop()
        shutdown_tracing()
    if not leader:
        return EXIT_OK
    say(f"{result.run_dir}: test accuracy {result.test_accuracy:.4f}, {result.parameters} parameters, "
        f"{', '.join(f'{k} {v}' for k, v in sorted(result.outcomes.items())) or 'no adaptation'} "
        f"({result.seconds:.0f} s); report: {result.run_dir / 'report.html'}")
    return EXIT_OK


__all__ = ["EXIT_CODES", "PlatformUnreachableError", "RankFailedError", "TrainResult", "build_host", "check_platform",
           "default_host", "main", "run_training"]
