"""What a run leaves behind and what it shows while it runs.

:class:`RunLog` appends one JSON object per line to ``<run dir>/metrics.jsonl`` (one per epoch) and
``events.jsonl`` (lifecycle transitions, rollbacks, kernel errors, field reports) and ``episode.jsonl``
(one decision per boundary as Simic learns from it: seed 004's observation vector, the action taken,
its outcomes), flushed at every write so a crashed run still leaves a readable trail.

:class:`ConsoleProgress` draws a rich progress bar over the epochs with log lines printed above it.
The bar turns itself off when stdout is not a terminal or ``CI`` is set; the log lines remain.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _jsonable(value: Any) -> Any:
    """Non-finite floats become None so every line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class RunLog:
    """Append-only JSON-lines files of one run."""

    def __init__(self, run_dir: Path, *, fresh: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mode = "w" if fresh else "a"  # a fresh run starts empty files; a resumed one appends
        self._metrics: IO[str] = open(self.run_dir / "metrics.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        self._events: IO[str] = open(self.run_dir / "events.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        self._episode: IO[str] = open(self.run_dir / "episode.jsonl", mode, encoding="utf-8")  # noqa: SIM115

    @staticmethod
    def truncate_after(run_dir: Path, epoch: int) -> int:
        """Drop the lines of epochs after ``epoch`` from both files; returns how many lines went.

        A run killed mid-epoch left that epoch's trail behind its last checkpoint; resuming from the checkpoint
        trains the epoch again, so its first, lost attempt must not stay in the record.
        """
        dropped = 0
        for name in ("metrics.jsonl", "events.jsonl", "episode.jsonl"):
            path = Path(run_dir) / name
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line).get("epoch", 0)) <= epoch:
                        kept.append(line)
                        continue
                except ValueError:  # a line cut short by the kill
                    pass
                dropped += 1
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        return dropped

    def metrics(self, record: dict[str, Any]) -> None:
        """One epoch's metrics."""
        self._write(self._metrics, record)

    def event(self, kind: str, epoch: int, **fields: Any) -> None:
        """One event (``kind`` names it: transition, rollback, kernel_error, field_report, ...)."""
        self._write(self._events, {"kind": kind, "epoch": epoch, **fields})

    def episode(self, record: dict[str, Any]) -> None:
        """One decision step of the run's episode (it carries its ``epoch``)."""
        self._write(self._episode, record)

    @staticmethod
    def _write(stream: IO[str], record: dict[str, Any]) -> None:
        stream.write(json.dumps(_jsonable(record), allow_nan=False, default=str) + "\n")
        stream.flush()

    def close(self) -> None:
        """Close the three files."""
        self._metrics.close()
        self._events.close()
        self._episode.close()


def progress_bar_wanted() -> bool:
    """A live bar only on an interactive terminal outside CI."""
    ci = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
    return sys.stdout.isatty() and not ci


class ConsoleProgress:
    """An epoch progress bar plus log lines; either part can be switched off."""

    def __init__(self, total_epochs: int, *, title: str = "training", bar: bool | None = None, lines: bool = True):
        self.lines = lines
        self.console = Console(highlight=False)
        self._progress: Progress | None = None
        self._task: Any = None
        if bar if bar is not None else progress_bar_wanted():
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(title, total=total_epochs, status="")

    def __enter__(self) -> ConsoleProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, completed: int, status: str) -> None:
        """Move the bar to ``completed`` epochs and show ``status`` beside it."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, status=status)

    def log(self, line: str) -> None:
        """Print one log line (above the bar when there is one)."""
        if self.lines:
            if self._progress is not None:
                self._progress.console.print(line, markup=False)
            else:
                print(line, flush=True)
