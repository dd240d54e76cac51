"""Keeps the database and the broker in step, from every worker: nothing lost, nothing run twice.

- A running job whose lease ran out (its worker was killed, its host died) goes back to the queue and is sent
  again, or fails with `WorkerLost` once `max_attempts` starts have died.
- A queued job whose message is not known to the broker as sent and not yet taken (Redis restarted without its
  data) is sent again. A job whose message is still there is left alone.
- A checkpoint file no attempt will resume from goes: a job's that ended without its worker (failed with
  `WorkerLost`, cancelled while queued), whose record then keeps only where its last attempt resumed from; one
  left by an attempt that died while writing a checkpoint, before recording it, or before removing the one it
  replaced.
- A running experiment that nothing will advance (no trial of it queued or running, nobody advancing it, nothing
  changed for a lease's length: its API process died after recording it, or its last trial's worker died before
  advancing it) is handed to a pool process to advance, one request waiting at a time.

Every change is a compare-and-set on the job row, so several workers reconciling at once do each thing once.
Runs in the Celery parent process on its timer; it never imports TensorFlow.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import bootsteps

from service import experiments, jobs
from service.db import FINISHED_STATUSES, JobRow, JobStatus, session_scope, utcnow
from service.queue import ANNOUNCE_SECONDS, JobQueue
from service.settings import Settings, get_settings
from service.store import checkpoint_files, model_store, remove_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)  # checkpoint files
    advanced: list[str] = field(default_factory=list)  # experiments nothing else would advance


# Queued jobs looked at per round, oldest first: a round's cost stays the same however long the backlog.
CANDIDATES_PER_ROUND = 500


def reconcile(settings: Settings, queue: JobQueue) -> Report:
    report = Report()
    now = utcnow()
    pools: dict[str, str | None] = {}
    with session_scope(settings.database_url) as session:
        for job in jobs.orphaned_jobs(session=session, now=now):
            outcome = jobs.release_orphan(session=session, job=job, max_attempts=settings.max_attempts)
            if outcome == JobStatus.QUEUED:
                report.requeued.append(job.id)
                pools[job.id] = job.pool
            elif outcome == JobStatus.FAILED:
                report.failed.append(job.id)
            elif outcome == JobStatus.CANCELLED:
                report.cancelled.append(job.id)
    for job_id in report.requeued:
        _send(settings, queue, job_id, pools[job_id])

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
        queue.send(job.id, job.pool)
        report.redispatched.append(job.id)
    report.swept = sweep_checkpoints(settings)
    with session_scope(settings.database_url) as session:
        stalled = experiments.stalled_experiments(session=session, before=now - grace)
    report.advanced = [experiment_id for experiment_id in stalled if queue.advance(experiment_id)]
    for kind in ("requeued", "failed", "cancelled", "redispatched", "swept", "advanced"):
        ids = getattr(report, kind)
        if ids:
            log.warning("reconciler: %s %s", kind, ", ".join(ids))
    return report


def sweep_checkpoints(settings: Settings) -> list[str]:
    """Remove the checkpoint files no attempt will resume from; returns their names. A round costs what the
    checkpoints directory holds (a file per running job, about), never what the history does."""
    store = model_store(settings)
    # Listed before the jobs are read: a file listed was written before its job's row is read, so a row that does
    # not name it was not about to (but for the attempt that runs the job now, which is left alone).
    owners = checkpoint_files(store)
    with session_scope(settings.database_url) as session:
        holders = jobs.jobs_by_id(session=session, job_ids=sorted({job_id for job_id, _ in owners.values()}))
        swept = []
        for name, (job_id, attempt) in owners.items():
            job = holders.get(job_id)
            if _resumable(name, attempt, job):
                continue
            if job is not None and name == jobs.checkpoint_file(job.checkpoint):  # an ended job's
                jobs.clear_ended_checkpoint(session=session, job=job)
            swept.append(name)
    # Removed once the records no longer name them.
    for name in swept:
        remove_checkpoint(store, name)
    return swept


def _resumable(name: str, attempt: int, job: JobRow | None) -> bool:
    """Whether an attempt of the job may still resume from the checkpoint file ``name`` of ``attempt``."""
    if job is None or job.status in FINISHED_STATUSES:
        return False
    if name == jobs.checkpoint_file(job.checkpoint):
        return True
    # Not the recorded one: the running attempt's, being written or about to be recorded (replacing the recorded
    # one), or one an earlier attempt left behind.
    return job.status == JobStatus.RUNNING and attempt >= job.attempts


def _send(settings: Settings, queue: JobQueue, job_id: str, pool: str | None) -> None:
    queue.send(job_id, pool)
    with session_scope(settings.database_url) as session:
        jobs.mark_dispatched(session=session, job_id=job_id)


class Reconciler(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs ``reconcile`` at worker start-up and then every ``reconcile_interval`` seconds."""

    # After the pool has forked its training processes, for the reason Presence gives.
    requires = ("celery.worker.components:Timer", "celery.worker.components:Pool")

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


class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
    """Announces, every few seconds, the pools whose jobs this worker takes, so that the API can tell a job no
    worker will take. On a thread of its own: a reconciler round stuck on an unreachable database never holds it
    up (and a worker cut off from Redis simply stops counting once its announcement runs out).

    It starts once the pool has forked its training processes, and announces the first time from the thread that
    starts it: a process forked while another thread is halfway through an import inherits that module's lock
    held by no one, and hangs at its first import of the module (TensorFlow's, in a training process). By the
    time the thread runs, everything it uses is imported."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.settings = get_settings()
        self.pools = self.settings.pools
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        queue = JobQueue(self.settings, worker.app)
        self._announce_once(queue, worker.hostname)
        self._thread = threading.Thread(
            target=self._announce, args=(queue, worker.hostname), name="presence", daemon=True
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _announce_once(self, queue: JobQueue, name: str) -> None:
        try:
            queue.announce(name, self.pools)
        except Exception:
            log.warning("could not announce this worker's pools; trying again in %.0f s", ANNOUNCE_SECONDS)

    def _announce(self, queue: JobQueue, name: str) -> None:
        while not self._stop.wait(ANNOUNCE_SECONDS):
            self._announce_once(queue, name)
        try:
            queue.withdraw(name, self.pools)
        except Exception:
            log.warning("could not withdraw this worker's pools; its announcement runs out by itself")
        finally:
            queue.close()
