"""Uploaded files (`/v1/files`). An upload is validated line by line as it is received and
stored as it came (`file_chunks`, served back by `GET /v1/files/{id}/content`); a valid one
queues a dataset build (source="file") that a worker runs like any other, writing the groups
to `dataset_groups`. A refused upload leaves nothing behind."""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin


class FileStatus(StrEnum):
    """OpenAI's file statuses."""

    UPLOADED = "uploaded"  # being received and validated (a refused upload leaves nothing)
    PROCESSED = "processed"  # every line was valid; its dataset is queued, building or ready


class File(TimestampMixin, Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # file-…
    filename: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    purpose: Mapped[str] = mapped_column(sa.String(32), nullable=False, index=True)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)  # FileStatus
    # Counted while the upload is validated (app/files/jsonl.py), before any dataset is built.
    group_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0", default=0)
    trajectory_count: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0", default=0)
    trainable_turns: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0", default=0)
    # the snapshot built from the file's groups
    dataset_id: Mapped[str | None] = mapped_column(
        sa.String(40), sa.ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )


class FileChunk(Base):
    """The bytes of an upload as they came, in order (deleted with the file)."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
