"""The job queue: the Celery app that carries training jobs, sending a job, and reading what the broker holds.

The API sends through it and the worker consumes through it; neither imports the other. A message carries only
the job's id (the database holds everything else), and the task id is the job id. Importing this module never loads
TensorFlow.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import redis
from celery import Celery

from service.settings import DEFAULT_POOL, Settings

TRAIN_TASK = "trainserve.train"
# Brings an experiment up to date (``service.experiments.advance``): the periodic safety net's way into a pool
# process, since the Celery parent never loads TensorFlow, which checking a new trial's model takes.
ADVANCE_TASK = "trainserve.advance_experiment"

# kombu's Redis transport keeps a queue's messages in one list per priority step, and the messages that workers
# hold but have not acknowledged in one hash.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
_UNACKED = "unacked"


def queue_name(settings: Settings, pool: str | None) -> str:
    """The Celery queue of a pool's jobs: the settings' queue for the default pool, ``<queue>.pool.<name>`` for
    another."""
    return settings.queue if pool in (None, DEFAULT_POOL) else f"{settings.queue}.pool.{pool}"


def advance_queue(settings: Settings) -> str:
    """The queue of the requests to advance an experiment, which every worker takes whatever its pools."""
    return f"{settings.queue}.advance"


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
        task_routes={ADVANCE_TASK: {"queue": advance_queue(settings)}},
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


# Each worker announces the pools it takes jobs from every ANNOUNCE_SECONDS, valid for PRESENCE_SECONDS: a worker
# that stopped announcing (stopped, killed, cut off) no longer counts after that.
ANNOUNCE_SECONDS = 5.0
PRESENCE_SECONDS = 20.0


def presence_key(settings: Settings, pool: str) -> str:
    """A hash of the workers taking a pool's jobs: worker name → until when its announcement holds."""
    return f"trainserve:workers:{settings.queue}:{pool}"


def pools_key(settings: Settings) -> str:
    """The set of pools any worker has announced."""
    return f"trainserve:pools:{settings.queue}"


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

    def send(self, job_id: str, pool: str | None) -> None:
        """Queue a job on its pool's queue: its marker first (a message never goes without one), then one message
        carrying its id, under its id."""
        self.redis.set(marker(job_id), 1, ex=self.MARKER_SECONDS)
        self.celery.send_task(TRAIN_TASK, args=[job_id], task_id=job_id, queue=queue_name(self.settings, pool))

    def announce(self, worker: str, pools: Sequence[str]) -> None:
        """This worker takes the jobs of these pools, for the next PRESENCE_SECONDS."""
        until = time.time() + PRESENCE_SECONDS
        pipe = self.redis.pipeline()
        pipe.sadd(pools_key(self.settings), *pools)
        for pool in pools:
            pipe.hset(presence_key(self.settings, pool), worker, f"{until:.3f}")
        pipe.execute()

    def withdraw(self, worker: str, pools: Sequence[str]) -> None:
        """This worker stops: it no longer counts for its pools."""
        pipe = self.redis.pipeline()
        for pool in pools:
            pipe.hdel(presence_key(self.settings, pool), worker)
        pipe.execute()

    def pools(self) -> set[str]:
        """Every pool a worker has announced, and the default pool."""
        names: set[bytes] = self.redis.smembers(pools_key(self.settings))  # type: ignore[assignment]
        return {DEFAULT_POOL, *(name.decode() for name in names)}

    def unschedulable(self, pools: Iterable[str]) -> dict[str, str]:
        """Of these pools, those no worker takes jobs from now, each with what to do about it; nothing when the
        broker cannot tell (none is set, or it is unreachable: that shows in /readyz)."""
        if not self.settings.redis_url:
            return {}
        try:
            counts = self.pool_workers(pools)
        except redis.RedisError:
            return {}
        return {
            pool: f"no worker takes the jobs of pool '{pool}' now: the job waits until one starts "
            f"(`trainserve worker --pool {pool}`)"
            for pool, count in counts.items()
            if count == 0
        }

    def live_workers(self, pools: Iterable[str]) -> dict[str, list[str]]:
        """The workers of each pool whose announcement holds now (made within PRESENCE_SECONDS). Announcements that
        ran out are removed on the way: a hash holds about the pool's live workers, whatever came and went."""
        wanted = sorted(set(pools))
        pipe = self.redis.pipeline()
        for pool in wanted:
            pipe.hgetall(presence_key(self.settings, pool))
        now = time.time()
        live: dict[str, list[str]] = {}
        stale: list[tuple[str, bytes]] = []
        for pool, workers in zip(wanted, pipe.execute(), strict=True):
            live[pool] = [name.decode() for name, until in workers.items() if float(until) > now]
            stale += [(pool, name) for name, until in workers.items() if float(until) <= now]
        if stale:
            pipe = self.redis.pipeline()
            for pool, name in stale:
                pipe.hdel(presence_key(self.settings, pool), name)
            pipe.execute()
        return live

    def pool_workers(self, pools: Iterable[str]) -> dict[str, int]:
        """How many workers take each pool's jobs now."""
        return {pool: len(names) for pool, names in self.live_workers(pools).items()}

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

    def depth(self, pools: Iterable[str] = (DEFAULT_POOL,)) -> tuple[int, int]:
        """(messages waiting in these pools' queues, messages workers hold unacknowledged), each read in constant
        time per pool."""
        names = [queue_name(self.settings, pool) for pool in sorted(set(pools))]
        keys = [key for name in names for key in (name, *(f"{name}{_PRIORITY_SEPARATOR}{s}" for s in _PRIORITY_STEPS))]
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
