"""Child processes of the demo: the W&B emulator and the service, in one process tree,
always stopped on exit (normal, error or Ctrl-C), leaving nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx


class DemoProcessError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ManagedProcess:
    """A child started in its own process group, with its output in a log file."""

    def __init__(
        self, name: str, args: list[str], *, env: Mapping[str, str], log_path: Path, cwd: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a Ctrl-C in the terminal reaches us, we stop it
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def wait_for_url(proc: ManagedProcess, url: str, *, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise DemoProcessError(
                f"{proc.name} exited early (code {proc.proc.returncode}):\n{proc.log_tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise DemoProcessError(
        f"{proc.name} did not become ready at {url} within {timeout_s:.0f}s:\n{proc.log_tail()}"
    )


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "app", *args]


class ProcessGroup:
    """Every child of the demo; `stop_all` runs on exit and on SIGTERM/SIGINT."""

    def __init__(self) -> None:
        self.children: list[ManagedProcess] = []

    def start(self, name: str, args: list[str], *, env: Mapping[str, str], workdir: Path) -> ManagedProcess:
        child = ManagedProcess(name, args, env=env, log_path=workdir / f"{name}.log", cwd=workdir)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


@contextlib.contextmanager
def process_group() -> Iterator[ProcessGroup]:
    group = ProcessGroup()

    def _on_signal(signum: int, _frame: object) -> None:
        group.stop_all()
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield group
    finally:
        group.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
