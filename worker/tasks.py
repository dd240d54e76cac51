"""Celery tasks: thin wrappers that take a delivery and hand its job id to the training code."""

from __future__ import annotations

import functools
import logging

import redis
from celery import Task

from service.queue import TRAIN_TASK, JobQueue
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

    return run_job(job_id, get_settings())
