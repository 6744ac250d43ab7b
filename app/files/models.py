"""Uploaded files (`/v1/files`). A fine-tune JSONL becomes a dataset (source="file") at upload,
so the file row keeps only its metadata; its groups live in `dataset_groups`."""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, TimestampMixin


class FileStatus(StrEnum):
    PROCESSED = "processed"  # validated and stored as a dataset (OpenAI's name)


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
    # the snapshot built from the file's groups (None only while it is being written)
    dataset_id: Mapped[str | None] = mapped_column(
        sa.String(40), sa.ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
