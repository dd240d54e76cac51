"""Keeps the database and the broker in step, from every worker: nothing lost, nothing run twice.

- A running job whose lease ran out (its worker was killed, its host died) goes back to the queue and is sent
  again, or fails with `WorkerLost` once `max_attempts` starts have died.
- A queued job whose message is in neither the queue nor the broker's unacknowledged set (Redis restarted
  without its data) is sent again. A job whose message is still there is left alone.

Every change is a compare-and-set on the job row, so several workers reconciling at once do each thing once.
Runs in the Celery parent process on its timer; it never imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from celery import Celery, bootsteps

from service import jobs
from service.db import JobStatus, session_scope, utcnow
from service.settings import Settings, get_settings
from worker.dispatch import send_train

log = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's messages in one list per priority step, and the messages that workers
# hold but have not acknowledged in one hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED = "unacked"


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)


def messages_in_broker(client: redis.Redis, queue: str) -> set[str]:
    """Task ids of the messages waiting in ``queue`` or held unacknowledged by a worker."""
    ids: set[str] = set()
    for key in (queue, *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS)):
        for raw in client.lrange(key, 0, -1):
            ids.add(_task_id(raw))
    for raw in client.hvals(_UNACKED):
        try:
            ids.add(_task_id(json.dumps(json.loads(raw)[0])))
        except (ValueError, IndexError, TypeError):
            continue
    ids.discard("")
    return ids


def _task_id(raw: Any) -> str:
    try:
        message = json.loads(raw)
        return str(message["headers"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def reconcile(settings: Settings, celery: Celery) -> Report:
    report = Report()
    now = utcnow()
    with session_scope(settings.database_url) as session:
        for job in jobs.orphaned_jobs(session=session, now=now):
            outcome = jobs.release_orphan(session=session, job=job, max_attempts=settings.max_attempts)
            if outcome == JobStatus.QUEUED:
                report.requeued.append(job.id)
            elif outcome == JobStatus.FAILED:
                report.failed.append(job.id)
            elif outcome == JobStatus.CANCELLED:
                report.cancelled.append(job.id)
    for job_id in report.requeued:
        _send(settings, celery, job_id)

    # A message takes a moment between the job row's commit and the broker: only look at older ones.
    grace = timedelta(seconds=settings.lease_seconds)
    with session_scope(settings.database_url) as session:
        candidates = jobs.undispatched_jobs(session=session, sent_before=now - grace)
    if candidates:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
        try:
            present = messages_in_broker(client, settings.queue)
        finally:
            client.close()
        for job in candidates:
            if job.id in present:
                continue
            with session_scope(settings.database_url) as session:
                if not jobs.claim_redispatch(session=session, job=job):
                    continue
            send_train(celery, job.id)
            report.redispatched.append(job.id)
    for kind in ("requeued", "failed", "cancelled", "redispatched"):
        ids = getattr(report, kind)
        if ids:
            log.warning("reconciler: %s %s", kind, ", ".join(ids))
    return report


def _send(settings: Settings, celery: Celery, job_id: str) -> None:
    send_train(celery, job_id)
    with session_scope(settings.database_url) as session:
        jobs.mark_dispatched(session=session, job_id=job_id)


class Reconciler(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs ``reconcile`` at worker start-up and then every ``reconcile_interval`` seconds."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings = get_settings()
        self.entry: Any = None

    def start(self, worker: Any) -> None:
        self.entry = worker.timer.call_repeatedly(self.settings.reconcile_interval, self._tick, (worker,), priority=10)
        worker.timer.call_after(0.5, self._tick, (worker,))

    def stop(self, worker: Any) -> None:
        if self.entry is not None:
            self.entry.cancel()

    def _tick(self, worker: Any) -> None:
        try:
            reconcile(self.settings, worker.app)
        except Exception:
            log.exception("reconciler: this round failed; the next one will try again")
