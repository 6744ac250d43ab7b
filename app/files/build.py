"""The dataset build of an uploaded fine-tune JSONL (source="file"), run by a worker.

The upload stored the file's bytes in `file_chunks`; the build copies them to a local spool
file, validates the lines one at a time (app/files/jsonl.py: the first bad line fails the
build with its number and what is wrong) and writes the groups in short transactions. The
dataset build bookkeeping (status, stats, the file's status, dropping the chunks) is
app/datasets/service.py's, as for every other source.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.snapshot import SnapshotWriter
from app.datasets.stats import FROM_FILE, BuildStats
from app.errors import BadRequest
from app.files.jsonl import GroupReader, LineError
from app.files.models import File, FileChunk
from app.trajectories.art_shape import count_turns

BATCH_GROUPS = 200
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class FileBuild:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str, file_id: str) -> None:
        self._sessionmaker = sessionmaker
        self._file_id = file_id
        self.stats = BuildStats()
        self.writer = SnapshotWriter(
            sessionmaker, dataset_id, source="file", scorer="", scorer_version="", max_listed_rejections=0
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
        seq = -1
        while True:
            async with self._sessionmaker() as session:
                rows = (
                    await session.execute(
                        sa.select(FileChunk.seq, FileChunk.data)
                        .where(FileChunk.file_id == self._file_id, FileChunk.seq > seq)
                        .order_by(FileChunk.seq)
                        .limit(8)
                    )
                ).all()
            if not rows:
                return
            for _seq, data in rows:
                await asyncio.to_thread(spool.write, data)
            seq = rows[-1][0]

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
