"""OpenAI's file object (`client.files.*` of the official SDK)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.db import to_unix
from app.files.models import File


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = Field(
        description="uploaded: stored, its dataset is being built; processed: every line was valid and the "
        "groups are a dataset; error: status_details names the first bad line"
    )
    status_details: str | None = None
    expires_at: int | None = None
    dataset_id: str | None = Field(description="the dataset (source=file) holding the file's groups")

    @classmethod
    def from_row(cls, row: File) -> FileObject:
        return cls(
            id=row.id,
            bytes=row.bytes,
            created_at=to_unix(row.created_at) or 0,
            filename=row.filename,
            purpose=row.purpose,
            status=row.status,
            status_details=row.status_details,
            dataset_id=row.dataset_id,
        )


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
