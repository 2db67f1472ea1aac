"""Services as separate processes (integration tests, benchmarks): ``esper serve <name>`` with its own log."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

#: The repository root (services run from it, as ``make`` would run them).
ROOT = Path(__file__).resolve().parents[3]
ESPER = str(Path(sys.executable).with_name("esper"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """One ``esper serve <service>`` subprocess with its own log file."""

    def __init__(self, service: str, env: dict[str, str], logs: Path) -> None:
        self.service = service
        # Without an identity provider's keys a service runs in development mode (an open API).
        self.env = env if "ESPER_AUTH_JWKS" in env else {"ESPER_DEVELOPMENT": "true"} | env
        self.port = int(env["ESPER_PORT"])
        self.log = logs / f"{service}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wait_s: float = 180.0) -> Proc:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen([ESPER, "serve", self.service], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.service} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"{self.service} did not become healthy in {wait_s} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed or acknowledged."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self, lines: int = 60) -> str:
        text_ = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text_.splitlines()[-lines:])
