"""The job queue: the Celery app that carries training jobs, sending a job, and reading what the broker holds.

The API sends through it and the worker consumes through it; neither imports the other. A message carries only
the job's id (the database holds everything else), and the task id is the job id. Importing this module never loads
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from celery import Celery

from service.settings import Settings

TRAIN_TASK = "trainserve.train"
# Brings an experiment up to date (``service.experiments.advance``): the periodic safety net's way into a pool
# process, since the Celery parent never loads TensorFlow, which checking a new trial's model takes.
ADVANCE_TASK = "trainserve.advance_experiment"

# kombu's Redis transport keeps a queue's messages in one list per priority step, and the messages that workers
# hold but have not acknowledged in one hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED = "unacked"


def make_celery(settings: Settings) -> Celery:
    """The Celery app of these settings: where jobs go and how they are delivered. The worker adds its tasks and
    its own steps to it."""
    app = Celery("trainserve")
    app.conf.update(
        broker_url=settings.redis_url or None,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        # The database holds every job's state and outcome; Celery only carries the job id.
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        # A message is acknowledged only once its job has ended, and one job at a time per pool process.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A new pool process imports TensorFlow before it reports up (several seconds on a busy machine); Celery's
        # default of 4 s would kill it and fork another, forever.
        worker_proc_alive_timeout=120,
        worker_concurrency=settings.worker_concurrency,
        # A backstop for memory a job leaves behind (a library's cache, say): a pool process that has grown past
        # this is replaced after its job, before the next one; its job's message was acknowledged already.
        worker_max_memory_per_child=settings.worker_max_memory_bytes // 1024,
        task_soft_time_limit=settings.job_time_limit,
        task_time_limit=settings.job_time_limit + 60,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        worker_hijack_root_logger=False,
    )
    return app


def marker(job_id: str) -> str:
    return f"trainserve:sent:{job_id}"


def advance_marker(experiment_id: str) -> str:
    return f"trainserve:advance:{experiment_id}"


class JobQueue:
    """Where training jobs go: one Celery message per job and, beside it in Redis, a marker that says the message
    was sent and not yet taken by a worker. The reconciler asks for the markers of the jobs it wonders about, at a
    cost that grows with those jobs only, never with the queue's length or the history's. A Redis that comes back
    without its data has lost both, and those jobs are sent again; one that kept its data kept both."""

    # Markers go when a worker takes the message; this only bounds what a message nobody took could leave.
    MARKER_SECONDS = 7 * 24 * 3600

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        self.celery = celery or make_celery(settings)
        self._redis: redis.Redis | None = None

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        return self._redis

    def send(self, job_id: str) -> None:
        """Queue a job: its marker first (a message never goes without one), then one message carrying its id,
        under its id."""
        self.redis.set(marker(job_id), 1, ex=self.MARKER_SECONDS)
        self.celery.send_task(TRAIN_TASK, args=[job_id], task_id=job_id)

    def advance(self, experiment_id: str) -> bool:
        """Have a worker bring an experiment up to date, unless such a request is already waiting (its marker, as
        a job's, goes when a worker takes it): however many reconcilers ask, one message waits at a time."""
        if not self.redis.set(advance_marker(experiment_id), 1, nx=True, ex=self.MARKER_SECONDS):
            return False
        self.celery.send_task(ADVANCE_TASK, args=[experiment_id])
        return True

    def advance_taken(self, experiment_id: str) -> None:
        self.redis.delete(advance_marker(experiment_id))

    def taken(self, job_id: str) -> None:
        """A worker has the job's message."""
        self.redis.delete(marker(job_id))

    def sent(self, job_ids: Sequence[str]) -> set[str]:
        """Those of the jobs whose message was sent and is not yet taken."""
        if not job_ids:
            return set()
        found = self.redis.mget([marker(job_id) for job_id in job_ids])
        return {job_id for job_id, value in zip(job_ids, found, strict=True) if value is not None}

    def depth(self) -> tuple[int, int]:
        """(messages waiting in the queue, messages workers hold unacknowledged), each read in constant time."""
        keys = (self.settings.queue, *(f"{self.settings.queue}{_PRIORITY_SEPARATOR}{s}" for s in _PRIORITY_STEPS))
        pipe = self.redis.pipeline()
        for key in keys:
            pipe.llen(key)
        pipe.hlen(_UNACKED)
        *waiting, held = pipe.execute()
        return int(sum(waiting)), int(held)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
