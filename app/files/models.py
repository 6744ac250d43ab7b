"""Uploaded files (`/v1/files`). An upload stores the file's bytes (`file_chunks`) and queues
a dataset build (source="file"); the build validates the lines and writes the groups to
`dataset_groups`, then drops the raw bytes. The file row keeps its metadata and status."""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin


class FileStatus(StrEnum):
    """OpenAI's file statuses."""

    UPLOADED = "uploaded"  # stored; its dataset is queued or building
    PROCESSED = "processed"  # every line was valid: the groups are a dataset
    ERROR = "error"  # a line was not (status_details names it)


class File(TimestampMixin, Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(sa.String(40), primary_key=True)  # file-…
    filename: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    purpose: Mapped[str] = mapped_column(sa.String(32), nullable=False, index=True)
    bytes: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    status_details: Mapped[str | None] = mapped_column(sa.String(1000), nullable=True)
    # the snapshot built from the file's groups
    dataset_id: Mapped[str | None] = mapped_column(
        sa.String(40), sa.ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )


class FileChunk(Base):
    """The raw bytes of an upload, in order, until its dataset build has read them."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(
        sa.String(40), sa.ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
