"""Celery tasks: thin wrappers that take a delivery and hand its job (or experiment) id to the code that does the
work."""

from __future__ import annotations

import functools
import logging

import redis
from celery import Task
from sqlalchemy import select

from service import experiments
from service.db import JobRow, session_scope
from service.queue import ADVANCE_TASK, TRAIN_TASK, JobQueue
from service.settings import get_settings
from worker.celery_app import app

log = logging.getLogger(__name__)


@functools.cache
def _queue() -> JobQueue:
    return JobQueue(get_settings(), app)


@app.task(name=TRAIN_TASK, bind=True)
def train(self: Task, job_id: str) -> str:
    try:
        _queue().taken(job_id)  # the message is with a worker now, not lost
    except redis.RedisError:
        log.warning("job %s: could not clear its queue marker; it will expire", job_id)
    # Imported here, in the pool child, so that the parent process never loads TensorFlow.
    from worker.training import run_job

    settings = get_settings()
    status = run_job(job_id, settings)
    with session_scope(settings.database_url) as session:
        experiment_id = session.scalar(select(JobRow.experiment_id).where(JobRow.id == job_id))
    if experiment_id is not None:
        # A trial ended (or was not this worker's to run): its experiment tells the study and asks the next.
        _advance(experiment_id)
    return status


@app.task(name=ADVANCE_TASK)
def advance(experiment_id: str) -> None:
    """The reconciler's request to advance an experiment nothing else would (see ``stalled_experiments``). Its
    marker stays while it runs, so that no reconciler asks again meanwhile."""
    try:
        _advance(experiment_id)
    finally:
        try:
            _queue().advance_taken(experiment_id)
        except redis.RedisError:
            log.warning("experiment %s: could not clear its advance marker; it will expire", experiment_id)


def _advance(experiment_id: str) -> None:
    try:
        experiments.advance(get_settings(), _queue(), experiment_id)
    except Exception:
        log.exception("experiment %s: could not advance it now; the reconciler asks again", experiment_id)
