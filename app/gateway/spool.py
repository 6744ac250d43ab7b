"""The write-ahead spool: a row answered to a client survives a kill -9 of its process.

Before the gateway completes an answer that carries a capture or a request-log row, the row
(with its final primary key) is appended to this process's spool file: one `os.write` of one
JSON line on an `O_APPEND` fd. There is no fsync: after `write(2)` returns the bytes are in the
kernel's page cache, which a killed process cannot take with it (only a crash of the machine
or its kernel can lose them; that is the trade chosen for a hot path of one syscall per row).

Files: `<dir>/<table>.<database>.<host>-<pid>-<start>-<n>.jsonl`, `<database>` a hash of the
database URL (password hidden): a file is only replayed into the database its rows were meant
for, even if a directory outlives a change of `DATABASE_URL` (or tests and benches share one). The process that writes a file holds an
exclusive `flock(2)` on it for as long as the file exists; a file is created under a dot-name,
locked, then renamed into place, so no other process ever sees it unlocked while its owner
lives. The file is rotated every `rotate_rows` rows or `rotate_s` seconds; a rotated file is
deleted by its owner once every row in it is settled (committed, or rejected for good by the
database). A file whose lock can be taken belongs to a dead process: the writer adopts it,
replays its rows with idempotent inserts (the primary key makes a second insert a no-op) and
deletes it. Processes sharing one directory adopt each other's files; a process alone in its
directory adopts its own predecessor's.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"
_APPEND = orjson.OPT_APPEND_NEWLINE


@dataclass(eq=False, slots=True)
class Segment:
    """One spool file of this process: how many rows it holds and how many are settled."""

    path: Path
    fd: int
    opened_at: float
    rows: int = 0
    settled: int = 0  # committed or rejected for good
    dropped: int = 0  # rows the memory buffer dropped (full): they must be replayed from the file
    rotated: bool = False

    @property
    def done(self) -> bool:
        """Rotated and every row it holds is accounted for (settled, or waiting for a replay)."""
        return self.rotated and self.settled + self.dropped >= self.rows

    def close(self, *, delete: bool) -> None:
        if self.fd < 0:
            return
        if delete:
            # unlinked while still locked: an adopter that opened it meanwhile sees nlink == 0
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)  # releases the flock
        self.fd = -1


@dataclass(slots=True)
class Spool:
    """This process's spool files for one table."""

    directory: Path
    table: str
    database: str = "default"  # `database_tag(url)`
    rotate_rows: int = 10_000
    rotate_s: float = 10.0
    current: Segment | None = None
    rotated: list[Segment] = field(default_factory=list)
    write_errors: int = 0
    _prefix: str = ""
    _count: int = 0

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{self.table}.{self.database}.{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        self.current = self._new_segment()

    def _new_segment(self) -> Segment:
        while True:
            self._count += 1
            name = f"{self._prefix}-{self._count}{SUFFIX}"
            hidden = self.directory / f".{name}.tmp"
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.rename(hidden, self.directory / name)
            except FileNotFoundError:
                # a sweeper took the hidden file for an orphan between our open and flock
                os.close(fd)
                continue
            return Segment(self.directory / name, fd, time.monotonic())

    def append(self, line: bytes) -> Segment | None:
        """Write one row's line (`encode`; one syscall); the segment it landed in, None if it
        could not be written."""
        segment = self.current
        if segment is None:
            return None
        try:
            written = os.write(segment.fd, line)
            while written < len(line):  # a regular file writes whole unless the disk is full
                written += os.write(segment.fd, line[written:])
        except OSError as exc:
            self.write_errors += 1
            logger.error("gateway.spool_write_failed table=%s error=%s", self.table, exc)
            return None
        segment.rows += 1
        if segment.rows >= self.rotate_rows:
            self.rotate()
        return segment

    def rotate(self) -> None:
        segment = self.current
        if segment is None or segment.rows == 0:
            return
        segment.rotated = True
        self.rotated.append(segment)
        self.current = self._new_segment()

    def tick(self) -> list[Segment]:
        """Rotate an old current file, delete settled ones; the rotated segments whose dropped
        rows must be replayed from their file (the caller replays, then `close(delete=True)`s)."""
        current = self.current
        if current is not None and current.rows and time.monotonic() - current.opened_at >= self.rotate_s:
            self.rotate()
        replay: list[Segment] = []
        keep: list[Segment] = []
        for segment in self.rotated:
            if not segment.done:
                keep.append(segment)
            elif segment.dropped:
                replay.append(segment)
                keep.append(segment)
            else:
                segment.close(delete=True)
        self.rotated = keep
        return replay

    def forget(self, segment: Segment) -> None:
        """A replayed segment: delete its file."""
        segment.close(delete=True)
        self.rotated = [s for s in self.rotated if s is not segment]

    def close(self) -> int:
        """At shutdown: delete settled files, leave (unlocked) those with unsettled rows for the
        next process to adopt. Returns the number of rows left in the spool."""
        self.rotate()
        left = 0
        for segment in self.rotated:
            unsettled = segment.rows - segment.settled
            left += unsettled
            segment.close(delete=unsettled == 0)
        self.rotated = []
        if self.current is not None:
            self.current.close(delete=True)  # empty: rotate() just opened it
            self.current = None
        return left


class Adopted:
    """A dead process's spool file, locked by us until `close()`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    def lines(self) -> Iterator[bytes]:
        with os.fdopen(os.dup(self.fd), "rb") as handle:
            handle.seek(0)
            yield from handle

    def close(self, *, delete: bool) -> None:
        if delete:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        os.close(self.fd)


def database_tag(url: str) -> str:
    """The part of a spool file's name that names its database."""
    safe = sa.engine.make_url(url).render_as_string(hide_password=True)
    return hashlib.sha256(safe.encode()).hexdigest()[:12]


def adoptable(directory: Path, table: str, own: set[Path], database: str = "default") -> Iterator[Adopted]:
    """The spool files of `table` (and `database`) in `directory` whose owner is gone (their flock is free),
    each locked for the caller. Orphaned hidden files (an owner killed while creating one)
    are deleted on the way."""
    prefix = f"{table}.{database}."
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in sorted(names):
        path = directory / name
        hidden = name.startswith(f".{prefix}") and name.endswith(".tmp")
        if not hidden and not (name.startswith(prefix) and name.endswith(SUFFIX)):
            continue
        if path in own:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # deleted by its owner meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # its process lives
            continue
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)  # its owner deleted it after settling every row
            continue
        if hidden:
            Adopted(path, fd).close(delete=True)
            continue
        yield Adopted(path, fd)


def encode(row: dict[str, Any]) -> bytes:
    """A row as one spool line (JSON, datetimes in RFC 3339, newline-terminated)."""
    return orjson.dumps(row, option=_APPEND)


def file_lines(path: Path) -> Iterator[bytes]:
    """The lines of a spool file, read as they are replayed (a file is at most `rotate_rows`
    rows, read in the event loop: local page-cache reads, short next to the inserts)."""
    with path.open("rb") as handle:
        yield from handle


def decode(line: bytes, datetime_columns: tuple[str, ...]) -> dict[str, Any] | None:
    """A spooled row as the writer inserts it; None for a line that is not one (torn, edited)."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    try:
        for name in datetime_columns:
            value = row.get(name)
            if isinstance(value, str):
                row[name] = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return row
