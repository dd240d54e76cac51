"""Keeps the database and the broker in step, from every worker: nothing lost, nothing run twice.

- A running job whose lease ran out (its worker was killed, its host died) goes back to the queue and is sent
  again, or fails with `WorkerLost` once `max_attempts` starts have died.
- A queued job whose message is not known to the broker as sent and not yet taken (Redis restarted without its
  data) is sent again. A job whose message is still there is left alone.

Every change is a compare-and-set on the job row, so several workers reconciling at once do each thing once.
Runs in the Celery parent process on its timer; it never imports TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import bootsteps

from service import jobs
from service.db import JobStatus, session_scope, utcnow
from service.queue import JobQueue
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)


# Queued jobs looked at per round, oldest first: a round's cost stays the same however long the backlog.
CANDIDATES_PER_ROUND = 500


def reconcile(settings: Settings, queue: JobQueue) -> Report:
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
        _send(settings, queue, job_id)

    # A message takes a moment between the job row's commit and the broker: only look at older ones.
    grace = timedelta(seconds=settings.lease_seconds)
    with session_scope(settings.database_url) as session:
        candidates = jobs.undispatched_jobs(session=session, sent_before=now - grace, limit=CANDIDATES_PER_ROUND)
    present = queue.sent([job.id for job in candidates])
    for job in candidates:
        if job.id in present:
            continue
        with session_scope(settings.database_url) as session:
            if not jobs.claim_redispatch(session=session, job=job):
                continue
        queue.send(job.id)
        report.redispatched.append(job.id)
    for kind in ("requeued", "failed", "cancelled", "redispatched"):
        ids = getattr(report, kind)
        if ids:
            log.warning("reconciler: %s %s", kind, ", ".join(ids))
    return report


def _send(settings: Settings, queue: JobQueue, job_id: str) -> None:
    queue.send(job_id)
    with session_scope(settings.database_url) as session:
        jobs.mark_dispatched(session=session, job_id=job_id)


class Reconciler(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs ``reconcile`` at worker start-up and then every ``reconcile_interval`` seconds."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings = get_settings()
        self.queue: JobQueue | None = None
        self.entry: Any = None

    def start(self, worker: Any) -> None:
        self.entry = worker.timer.call_repeatedly(self.settings.reconcile_interval, self._tick, (worker,), priority=10)
        worker.timer.call_after(0.5, self._tick, (worker,))

    def stop(self, worker: Any) -> None:
        if self.entry is not None:
            self.entry.cancel()

    def _tick(self, worker: Any) -> None:
        try:
            if self.queue is None:
                self.queue = JobQueue(self.settings, worker.app)
            reconcile(self.settings, self.queue)
        except Exception:
            log.exception("reconciler: this round failed; the next one will try again")
