"""OpenAI's file object (`client.files.*` of the official SDK)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.db import to_unix
from app.files.models import File, FileStatus


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: FileStatus = Field(
        description="uploaded: being received and validated; processed: every line was valid and its "
        "dataset (`dataset_id`) is queued, building or ready"
    )
    status_details: str | None = None
    expires_at: int | None = None
    dataset_id: str | None = Field(description="the dataset (source=file) holding the file's groups")
    group_count: int = Field(description="GRPO groups (lines) in the file")
    trajectory_count: int = Field(description="trajectories in all groups")
    trainable_turns: int = Field(
        description="assistant turns that are sampled Choices with logprobs: what ART trains"
    )

    @classmethod
    def from_row(cls, row: File) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=to_unix(row.created_at) or 0,
            filename=row.filename,
            purpose=row.purpose,
            status=FileStatus(row.status),
            dataset_id=row.dataset_id,
            group_count=row.group_count,
            trajectory_count=row.trajectory_count,
            trainable_turns=row.trainable_turns,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
