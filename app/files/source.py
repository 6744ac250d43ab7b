"""Uploaded files as a trajectory source: the dataset build of a fine-tune JSONL (source="file").

The upload validated every line and stored the file's bytes (`file_chunks`); a worker builds
the dataset like any other (app/datasets/service.py does the bookkeeping): the bytes are copied
to a local spool file, parsed again one line at a time, and the groups written in short
transactions. `POST /v1/datasets` cannot name this source: its datasets come from uploads.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.datasets.snapshot import SnapshotWriter
from app.datasets.sources import FILE
from app.datasets.stats import FROM_FILE, BuildStats
from app.errors import BadRequest, StoredError
from app.files.jsonl import GroupReader, LineError
from app.files.models import File
from app.files.service import file_content
from app.trajectories.art_shape import count_turns

if TYPE_CHECKING:
    from app.datasets.schemas import DatasetCreate

BATCH_GROUPS = 200
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class FileSource:
    name = FILE
    default_scorer: str | None = None

    def check_params(self, params: DatasetCreate) -> None:
        raise ValueError("datasets of uploaded files are made by uploading them (POST /v1/files)")

    def prepare(self, settings: Settings, params: DatasetCreate) -> dict[str, Any]:
        raise BadRequest(
            "datasets of uploaded files are made by uploading them (POST /v1/files)", param="source"
        )

    def build(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        dataset_id: str,
        params: DatasetCreate,
        stored: dict[str, Any],
    ) -> FileBuild:
        return FileBuild(sessionmaker, dataset_id, str(stored.get("file_id")))

    def describe_error(self, exc: BaseException, settings: Settings) -> StoredError | None:
        return None


class FileBuild:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str, file_id: str) -> None:
        self._sessionmaker = sessionmaker
        self._file_id = file_id
        self.stats = BuildStats()
        self.writer = SnapshotWriter(
            sessionmaker, dataset_id, source=FILE, scorer="", scorer_version="", max_listed_rejections=0
        )

    async def run(self) -> BuildStats:
        started = time.monotonic()
        async with self._sessionmaker() as session:
            file = await session.get(File, self._file_id)
            filename = file.filename if file is not None else self._file_id
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            await self._spool(spool)
            spool.seek(0)
            reader = GroupReader(spool)
            try:
                await self._read(reader)
            except LineError as exc:
                raise BadRequest(
                    f"invalid JSONL file {filename!r}: {exc}", param="file", code=exc.code
                ) from None
        self.stats.duration_s = time.monotonic() - started
        self.stats.extra["scorer"] = None
        return self.stats

    async def _spool(self, spool: tempfile.SpooledTemporaryFile[bytes]) -> None:
        async for data in file_content(self._sessionmaker, self._file_id):
            await asyncio.to_thread(spool.write, data)

    async def _read(self, reader: GroupReader) -> None:
        stats, no_signal = self.stats, 0
        while True:
            batch = await asyncio.to_thread(reader.next_batch, BATCH_GROUPS)
            if not batch:
                break
            for group in batch:
                rewards = [float(t["reward"]) for t in group.trajectories]
                trainable = context_only = with_trainable = 0
                for traj in group.trajectories:
                    turns = count_turns(traj)
                    trainable += turns.trainable
                    context_only += turns.context_only
                    with_trainable += turns.trainable > 0
                stats.rows_read += len(rewards)
                stats.windows += 1
                stats.context_sources[FROM_FILE] += len(rewards)
                if len(rewards) < 2 or max(rewards) == min(rewards):
                    no_signal += 1
                self.writer.add_group(group.scenario_id, rewards, group.trajectories, trainable)
                stats.add_group(rewards, trainable, context_only, with_trainable)
            await self.writer.flush()
        if stats.groups_kept == 0:
            raise LineError(max(reader.line, 1), "the file holds no trajectory group", "empty_file")
        stats.extra["groups_without_signal"] = no_signal


FILE_SOURCE = FileSource()  # registered by the composition root (app/main.py)
