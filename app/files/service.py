"""Uploaded fine-tune files: store the bytes, queue the dataset build, answer at once.

An upload writes the file's bytes to `file_chunks` in short transactions (a large file never
holds SQLite's write lock for long), then, in one transaction, the file row's size, its
dataset (queued) and the dataset's build work item. A worker builds the dataset like any
other (app/files/build.py validates every line); the file is `uploaded` until then, and
`processed` or `error` (with `status_details` naming the first bad line) after.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import IO

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.datasets.models import Dataset, DatasetGroup
from app.datasets.service import queue_file_dataset
from app.errors import BadRequest, NotFound
from app.files.models import File, FileChunk, FileStatus
from app.ids import new_id
from app.pagination import after_row, created_order, cursor_anchor, fetch_page

PURPOSES = ("fine-tune",)
CHUNK_BYTES = 1024 * 1024
CHUNKS_PER_COMMIT = 8


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise BadRequest(
            f"purpose {purpose!r} is not supported; this service accepts purpose='fine-tune' "
            "(a JSONL of trajectory groups)",
            param="purpose",
            code="invalid_purpose",
        )


async def upload_file(
    sessionmaker: async_sessionmaker[AsyncSession], stream: IO[bytes], *, filename: str, purpose: str
) -> File:
    """Store an upload and queue its dataset build; returns the file (`uploaded`)."""
    check_purpose(purpose)
    file_id = new_id("file")
    async with sessionmaker() as session:
        session.add(
            File(id=file_id, filename=filename[:255], purpose=purpose, bytes=0, status=FileStatus.UPLOADED)
        )
        await session.commit()
    try:
        size = await _store_chunks(sessionmaker, file_id, stream)
        async with sessionmaker() as session:
            file = await get_file(session, file_id)
            file.bytes = size
            file.dataset_id = queue_file_dataset(session, file).id
            await session.commit()
            return file
    except BaseException:
        await asyncio.shield(_remove(sessionmaker, file_id))
        raise


async def _store_chunks(
    sessionmaker: async_sessionmaker[AsyncSession], file_id: str, stream: IO[bytes]
) -> int:
    size, seq = 0, 0
    while True:
        rows = []
        for _ in range(CHUNKS_PER_COMMIT):
            data = await asyncio.to_thread(stream.read, CHUNK_BYTES)
            if not data:
                break
            rows.append({"file_id": file_id, "seq": seq, "data": data})
            seq += 1
            size += len(data)
        if rows:
            async with sessionmaker() as session:
                await session.execute(sa.insert(FileChunk), rows)
                await session.commit()
        if len(rows) < CHUNKS_PER_COMMIT:
            return size


async def _remove(sessionmaker: async_sessionmaker[AsyncSession], file_id: str) -> None:
    async with sessionmaker() as session:
        await session.execute(sa.delete(FileChunk).where(FileChunk.file_id == file_id))
        await session.execute(sa.delete(File).where(File.id == file_id))
        await session.commit()


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
    if after is not None:
        anchor = await cursor_anchor(session, File, after, what="file")
        query = query.where(after_row(File, anchor, newest_first=newest_first))
    return await fetch_page(session, query.order_by(*created_order(File, newest_first=newest_first)), limit)


async def delete_file(session: AsyncSession, file_id: str) -> None:
    """Delete the file and the dataset made from it (its groups go with it)."""
    file = await get_file(session, file_id)
    dataset_id = file.dataset_id
    await session.delete(file)
    await session.flush()
    if dataset_id is not None:
        await session.execute(sa.delete(DatasetGroup).where(DatasetGroup.dataset_id == dataset_id))
        await session.execute(sa.delete(Dataset).where(Dataset.id == dataset_id))


async def file_lines(
    sessionmaker: async_sessionmaker[AsyncSession], dataset_id: str | None
) -> AsyncIterator[bytes]:
    """The file's groups as JSONL again (canonical JSON, one group per line), page by page."""
    if dataset_id is None:
        return
    position = 0
    while True:
        async with sessionmaker() as session:
            rows = (
                await session.scalars(
                    sa.select(DatasetGroup)
                    .where(DatasetGroup.dataset_id == dataset_id, DatasetGroup.position >= position)
                    .order_by(DatasetGroup.position)
                    .limit(100)
                )
            ).all()
        if not rows:
            return
        for row in rows:
            yield (
                orjson.dumps({"trajectories": row.trajectories, "metadata": {"scenario_id": row.scenario_id}})
                + b"\n"
            )
        position = rows[-1].position + 1
