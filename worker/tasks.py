"""Celery tasks: thin wrappers that hand a job id to the training code."""

from __future__ import annotations

from celery import Task

from service.settings import get_settings
from worker.celery_app import app
from worker.dispatch import TRAIN_TASK


@app.task(name=TRAIN_TASK, bind=True)
def train(self: Task, job_id: str) -> str:
    # Imported here, in the pool child, so that the parent process never loads TensorFlow.
    from worker.training import run_job

    return run_job(job_id, get_settings())
