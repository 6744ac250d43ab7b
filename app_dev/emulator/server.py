"""Running the emulator over real HTTP: in a background thread (tests) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

from app_dev.emulator.app import create_emulator_app
from app_dev.emulator.state import EmulatorState


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before starting uvicorn, so port 0 yields a known free port with no race."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening now lets clients connect as soon as the URL is known; uvicorn accepts once up.
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def base_url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/v1"


def _uvicorn_config(state: EmulatorState, *, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        create_emulator_app(state),
        log_level=log_level,
        # Never reconfigure the host process's logging (pytest, the CLI's own configuration).
        log_config=None,
        access_log=False,
        lifespan="off",
        # Hanging requests (fault "hang") must not hold up a shutdown.
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )


class EmulatorServer:
    """uvicorn serving `state` on its own thread and event loop; `start()` returns once it listens."""

    def __init__(self, state: EmulatorState | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state or EmulatorState()
        self._socket = bind_socket(host, port)
        self.base_url = base_url_of(self._socket)
        self._server = uvicorn.Server(_uvicorn_config(self.state, log_level="warning"))
        self._thread = threading.Thread(target=self._run, name="wandb-emulator", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self, timeout_s: float = 30.0) -> EmulatorServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the W&B emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.state.reset()  # releases hanging requests
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(state: EmulatorState, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve on a socket from `bind_socket` in the foreground until SIGINT/SIGTERM (uvicorn
    handles both gracefully: in-flight requests get a second, then the process returns)."""
    try:
        uvicorn.Server(_uvicorn_config(state, log_level=log_level)).run(sockets=[sock])
    finally:
        sock.close()
