"""Sending a training job to the workers: one Celery message that carries only the job id."""

from __future__ import annotations

from celery import Celery

TRAIN_TASK = "trainserve.train"


def send_train(celery: Celery, job_id: str) -> None:
    """Queue a job. The task id is the job id, so the broker's messages can be matched with job rows."""
    celery.send_task(TRAIN_TASK, args=[job_id], task_id=job_id)
