"""Jobs: status, progress and per-epoch history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service import jobs
from service.api.deps import SessionDep
from service.api.errors import not_found, responses
from service.api.schemas import JobList, JobRead
from service.db import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(description="Job id as returned by POST /train.", max_length=64)]


@router.get("", response_model=JobList, responses=responses(422))
def list_jobs(
    session: SessionDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    """Jobs, newest first."""
    rows, count = jobs.list_jobs(session=session, status=status, limit=limit, offset=offset)
    history = jobs.job_history(session=session, job_ids=[row.id for row in rows])
    return JobList(data=[JobRead.from_row(row, history[row.id]) for row in rows], count=count)


@router.get("/{job_id}", response_model=JobRead, responses=responses(404))
def get_job(job_id: JobId, session: SessionDep) -> JobRead:
    job = jobs.get_job(session=session, job_id=job_id)
    if job is None:
        raise not_found("job", job_id)
    history = jobs.job_history(session=session, job_ids=[job.id])
    return JobRead.from_row(job, history[job.id])
