"""`/v1/files`: the OpenAI files API for fine-tune JSONL (`client.files.create/list/retrieve/delete`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse

from app.deps import SessionDep
from app.errors import BadRequest, error_responses
from app.files import service
from app.files.schemas import FileDeleted, FileObject
from app.pagination import ListPage
from app.worker.lifecycle import wake_worker

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("", response_model=FileObject, responses=error_responses(400, 413))
async def create_file(
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form()],
) -> FileObject:
    """Upload a JSONL of trajectory groups (`purpose=fine-tune`), one ART `TrajectoryGroup`
    per line. Answers at once with the file `uploaded` and its dataset queued; a worker
    validates every line and builds the dataset: the file then becomes `processed`, or `error`
    with `status_details` naming the first bad line and what is wrong with it. The file id is
    usable as a job's `training_file` once it is processed."""
    service.check_purpose(purpose)
    if not file.filename:
        raise BadRequest("the upload has no filename", param="file", code="invalid_file")
    row = await service.upload_file(
        request.app.state.sessionmaker, file.file, filename=file.filename, purpose=purpose
    )
    wake_worker(request)
    return FileObject.from_row(row)


@router.get("", response_model=ListPage[FileObject], responses=error_responses(400))
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


@router.get("/{file_id}", response_model=FileObject, responses=error_responses(404))
async def retrieve_file(file_id: str, session: SessionDep) -> FileObject:
    return FileObject.from_row(await service.get_file(session, file_id))


@router.delete("/{file_id}", response_model=FileDeleted, responses=error_responses(404))
async def delete_file(file_id: str, session: SessionDep) -> FileDeleted:
    """Deletes the file and the dataset made from it."""
    await service.delete_file(session, file_id)
    await session.commit()
    return FileDeleted(id=file_id)


@router.get("/{file_id}/content", responses=error_responses(404))
async def file_content(file_id: str, request: Request, session: SessionDep) -> StreamingResponse:
    """The file's groups as JSONL (re-serialised canonically: same groups, compact JSON)."""
    dataset_id = (await service.get_file(session, file_id)).dataset_id
    # end this read before streaming: the stream pages with its own short sessions, and an
    # open transaction here would hold SQLite's lock (every transaction begins IMMEDIATE)
    await session.rollback()
    return StreamingResponse(
        service.file_lines(request.app.state.sessionmaker, dataset_id), media_type="application/jsonl"
    )
