"""Uploaded fine-tune files: validate each line as it arrives, store the bytes, queue the build.

An upload is read line by line (app/files/jsonl.py): a bad line, or a file without a single
turn ART can train, is refused at once (400 naming the line or the fix) and leaves nothing
behind. The bytes are stored as they came (`file_chunks`) in short transactions, so a large
file never holds SQLite's write lock for long; then, in one transaction, the file becomes
`processed` and its dataset is queued for a worker (app/files/source.py builds it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import IO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup
from app.datasets.service import queue_upload_dataset
from app.errors import BadRequest, NotFound
from app.files.jsonl import GroupReader, LineError
from app.files.models import File, FileChunk, FileStatus
from app.ids import new_id
from app.pagination import created_page

PURPOSES = ("fine-tune",)
BATCH_GROUPS = 200
CHUNK_BYTES = 1024 * 1024  # stored per file_chunks row
CHUNKS_PER_COMMIT = 8


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise BadRequest(
            f"purpose {purpose!r} is not supported; this service accepts purpose='fine-tune' "
            "(a JSONL of trajectory groups)",
            param="purpose",
            code="invalid_purpose",
        )


class _KeptLines:
    """The upload's lines as the reader takes them, kept until they are stored."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.kept: list[bytes] = []
        self.kept_bytes = 0

    def readline(self) -> bytes:
        line = self._stream.readline()
        if line:
            self.kept.append(line)
            self.kept_bytes += len(line)
        return line

    def take(self) -> bytes:
        data = b"".join(self.kept)
        self.kept.clear()
        self.kept_bytes = 0
        return data


async def upload_file(
    sessionmaker: async_sessionmaker[AsyncSession], stream: IO[bytes], *, filename: str, purpose: str
) -> File:
    """Validate and store a JSONL upload, and queue its dataset; BadRequest naming the first bad
    line (or `no_trainable_data` for a file ART could not train on)."""
    check_purpose(purpose)
    file_id = new_id("file")
    async with sessionmaker() as session:
        session.add(
            File(id=file_id, filename=filename[:255], purpose=purpose, bytes=0, status=FileStatus.UPLOADED)
        )
        await session.commit()
    lines = _KeptLines(stream)
    reader = GroupReader(lines)
    try:
        seq = 0
        while True:
            batch = await asyncio.to_thread(reader.next_batch, BATCH_GROUPS)
            if batch and lines.kept_bytes < CHUNK_BYTES * CHUNKS_PER_COMMIT:
                continue
            seq = await _store(sessionmaker, file_id, lines.take(), seq)
            if not batch:
                break
        reader.check_trainable()
    except LineError as exc:
        await _remove(sessionmaker, file_id)
        raise BadRequest(f"invalid JSONL file {filename!r}: {exc}", param="file", code=exc.code) from None
    except BaseException:
        await asyncio.shield(_remove(sessionmaker, file_id))
        raise
    async with sessionmaker() as session:
        file = await get_file(session, file_id)
        file.bytes = reader.bytes
        file.status = FileStatus.PROCESSED
        file.group_count = reader.groups
        file.trajectory_count = reader.trajectories
        file.trainable_turns = reader.trainable_turns
        file.dataset_id = (await queue_upload_dataset(session, file_id)).id
        await session.commit()
        return file


async def _store(sessionmaker: async_sessionmaker[AsyncSession], file_id: str, data: bytes, seq: int) -> int:
    """Store `data` as the file's next chunks; returns the next sequence number."""
    rows = [
        {"file_id": file_id, "seq": seq + n, "data": data[at : at + CHUNK_BYTES]}
        for n, at in enumerate(range(0, len(data), CHUNK_BYTES))
    ]
    if rows:
        async with sessionmaker() as session:
            await session.execute(sa.insert(FileChunk), rows)
            await session.commit()
    return seq + len(rows)


async def _remove(sessionmaker: async_sessionmaker[AsyncSession], file_id: str) -> None:
    async with sessionmaker() as session:
        await session.execute(sa.delete(FileChunk).where(FileChunk.file_id == file_id))
        await session.execute(sa.delete(File).where(File.id == file_id))
        await session.commit()


async def file_content(sessionmaker: async_sessionmaker[AsyncSession], file_id: str) -> AsyncIterator[bytes]:
    """The file's bytes as they were uploaded, chunk by chunk."""
    seq = -1
    while True:
        async with sessionmaker() as session:
            rows = (
                await session.execute(
                    sa.select(FileChunk.seq, FileChunk.data)
                    .where(FileChunk.file_id == file_id, FileChunk.seq > seq)
                    .order_by(FileChunk.seq)
                    .limit(CHUNKS_PER_COMMIT)
                )
            ).all()
        if not rows:
            return
        for _seq, data in rows:
            yield data
        seq = rows[-1][0]


async def resolve_training_file(session: AsyncSession, file_or_dataset_id: str) -> Dataset:
    """The dataset a job's `training_file` names: a `ds-…` id, or a `file-…` id (an uploaded
    fine-tune JSONL, stored as a dataset with source="file" when it was uploaded).

    Raises NotFound(param="training_file", code="file_not_found") for an unknown id or a file
    whose dataset is gone. The dataset may not be ready yet: check `status` (DatasetStatus.READY).
    """

    def missing() -> NotFound:
        return NotFound(
            f"no file or dataset with id {file_or_dataset_id!r}", param="training_file", code="file_not_found"
        )

    if file_or_dataset_id.startswith("file-"):
        file = await session.get(File, file_or_dataset_id)
        if file is None or file.dataset_id is None:
            raise missing()
        dataset = await session.get(Dataset, file.dataset_id)
    else:
        dataset = await session.get(Dataset, file_or_dataset_id)
    if dataset is None:
        raise missing()
    return dataset


async def get_file(session: AsyncSession, file_id: str) -> File:
    file = await session.get(File, file_id)
    if file is None:
        raise NotFound(f"no file with id {file_id!r}", param="file_id", code="file_not_found")
    return file


async def list_files(
    session: AsyncSession, *, purpose: str | None, after: str | None, limit: int, order: str
) -> tuple[list[File], bool]:
    query = sa.select(File)
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    newest_first = order == "desc"
    return await created_page(
        session, query, File, after=after, limit=limit, newest_first=newest_first, what="file"
    )


async def delete_file(session: AsyncSession, file_id: str) -> None:
    """Delete the file and the dataset made from it (its groups go with it)."""
    file = await get_file(session, file_id)
    dataset_id = file.dataset_id
    await session.delete(file)
    await session.flush()
    if dataset_id is not None:
        await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == dataset_id))
        await session.execute(sa.delete(Dataset).where(Dataset.id == dataset_id))
