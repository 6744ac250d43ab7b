"""`/v1/files`: the OpenAI files API for fine-tune JSONL (`client.files.create/list/retrieve/delete`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from app.auth import require_scope
from app.deps import SessionDep
from app.errors import BadRequest, error_responses
from app.files import service
from app.files.format import TRAINING_FILE_FORMAT
from app.files.schemas import FileDeleted, FileObject
from app.keys.scopes import Scope
from app.pagination import ListPage
from app.state import app_state

router = APIRouter(prefix="/v1/files", tags=["files"])
# Uploading and reading are training; deleting is admin (app/keys/scopes.py).
TRAINING = [require_scope(Scope.training)]
ADMIN = [require_scope(Scope.admin)]


@router.post(
    "",
    dependencies=TRAINING,
    response_model=FileObject,
    responses=error_responses(400, 413),
    description="Upload a JSONL of trajectory groups (`purpose=fine-tune`). A malformed file is "
    "refused with the first bad line and what is wrong with it.\n" + TRAINING_FILE_FORMAT,
)
async def create_file(
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form()],
) -> FileObject:
    """Upload a JSONL of trajectory groups (`purpose=fine-tune`), one ART `TrajectoryGroup`
    per line. Every line is validated as it arrives: a malformed file, or one with no turn ART
    can train, is refused (400 naming the line or the fix). A valid file answers `processed`
    with its dataset (`dataset_id`) queued for a worker to build, like any other dataset; the
    file id is usable as a job's `training_file` at once (the job waits for the build)."""
    service.check_purpose(purpose)
    if not file.filename:
        raise BadRequest("the upload has no filename", param="file", code="invalid_file")
    row = await service.upload_file(
        app_state(request.app).sessionmaker, file.file, filename=file.filename, purpose=purpose
    )
    app_state(request.app).wake_worker()
    return FileObject.from_row(row)


@router.get("", dependencies=TRAINING, response_model=ListPage[FileObject], responses=error_responses(400))
async def list_files(
    session: SessionDep,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> ListPage[FileObject]:
    rows, has_more = await service.list_files(session, purpose=purpose, after=after, limit=limit, order=order)
    data = [FileObject.from_row(r) for r in rows]
    return ListPage.of(data, has_more)


@router.get("/{file_id}", dependencies=TRAINING, response_model=FileObject, responses=error_responses(404))
async def retrieve_file(file_id: str, session: SessionDep) -> FileObject:
    return FileObject.from_row(await service.get_file(session, file_id))


@router.delete("/{file_id}", dependencies=ADMIN, response_model=FileDeleted, responses=error_responses(404))
async def delete_file(file_id: str, session: SessionDep) -> FileDeleted:
    """Deletes the file and the dataset made from it."""
    await service.delete_file(session, file_id)
    await session.commit()
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content", dependencies=TRAINING, responses=error_responses(404))
async def file_content(file_id: str, request: Request, session: SessionDep) -> StreamingResponse:
    """The file's bytes, exactly as they were uploaded."""
    await service.get_file(session, file_id)
    # end this read before streaming: the stream pages with its own short sessions, and an
    # open transaction here would hold SQLite's lock (every transaction begins IMMEDIATE)
    await session.rollback()
    return StreamingResponse(
        service.file_content(app_state(request.app).sessionmaker, file_id), media_type="application/jsonl"
    )
