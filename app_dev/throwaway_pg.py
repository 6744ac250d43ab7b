"""A throwaway Postgres cluster: initdb into a temporary directory, its own port, trust auth.

For the tests and benches that stop and restart the database (an outage, a restart during a
soak). The shared server on 5432 is used by every other test and must never go away, so
anything that stops a database stops one of these.

`initdb` refuses to run as root (CI runs as root): then every server binary runs as the
`postgres` user (`runuser -u postgres --`) and the directory is owned by it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_RUN_AS = "postgres"


class PostgresUnavailable(RuntimeError):
    """The server binaries (or a user to run them as) are missing here: say which."""


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<v>/bin that has initdb and pg_ctl (Debian's layout)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0), reverse=True
    )
    for candidate in candidates:
        path = Path(candidate)
        if (path / "initdb").exists() and (path / "pg_ctl").exists():
            return path
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def unavailable_reason() -> str | None:
    """None when a throwaway cluster can start here; else why not (for a skip message)."""
    if find_bin_dir() is None:
        return "no Postgres server binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _user_exists(_RUN_AS)):
        return "running as root without a `postgres` user and runuser to run initdb as"
    return None


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThrowawayPostgres:
    """`start()`, `stop()`, `restart()`, `destroy()`; `url` is an asyncpg SQLAlchemy URL."""

    def __init__(self, *, port: int | None = None, base_dir: str | None = None) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise PostgresUnavailable(reason)
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="throwaway-pg-", dir=base_dir))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, user=_RUN_AS, group=_RUN_AS)
            self.root.chmod(0o700)
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ]
        )
        # Local socket in the temp dir: never collides with the shared server's /var/run socket.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def plain_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", _RUN_AS, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{argv[-1] if argv else ''}: {' '.join(argv)} failed: {result.stderr.strip()}"
            )
        return result

    def start(self) -> None:
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects clients and shuts down cleanly; `immediate` is a crash."""
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def restart(self, down_s: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode)
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def is_running(self) -> bool:
        result = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"], check=False)
        return result.returncode == 0

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"throwaway Postgres on port {self.port} did not come up: see {self.log_path}")

    def destroy(self) -> None:
        if self.data_dir.exists() and self.is_running():
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()
