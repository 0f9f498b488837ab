"""Benchmark servers: this app and the baseline (:mod:`space.bench.baseline`) as subprocesses on loopback
ports, with their memory read from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from space.serving.threads import INFERENCE

BASELINE = [sys.executable, "-m", "space.bench.baseline"]  # + model folder; the port is appended


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server subprocess on a loopback port, with its peak RSS read from /proc."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("w") as handle:
            self.process = subprocess.Popen(
                [*command, str(self.port)] if name == "baseline" else command,
                env={**env, "SPACE_PORT": str(self.port)},
                stdout=handle,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the server process has used so far."""
        return self._status_mb("VmHWM:")

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the server process has used so far."""
        return stat_cpu_s(Path(f"/proc/{self.process.pid}/stat").read_text())

    def cpu_split_s(self) -> tuple[float, float]:
        """CPU seconds so far of the threads that run the model (named ``inference*``: the batcher's
        workers and the runtime's pools, :mod:`space.serving.threads`), and of all the others: decoding,
        preprocessing, HTTP, JSON, thread hops (threads that ended count there too)."""
        inference = 0.0
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if stat[stat.index("(") + 1 : stat.rindex(")")].startswith(INFERENCE):  # the thread's name
                inference += stat_cpu_s(stat)
        return inference, self.cpu_s() - inference

    def rss_mb(self) -> float:
        """VmRSS: the resident memory of the server process now."""
        return self._status_mb("VmRSS:")

    def _status_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key):
                return round(int(line.split()[1]) / 1024, 1)
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def stat_cpu_s(stat: str) -> float:
    """User + system CPU seconds from a /proc ``stat`` line (of a process or of one of its threads)."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
