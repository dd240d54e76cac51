"""The Celery application. Importing it never loads TensorFlow: the Celery parent process forks pool children,
and each child loads TensorFlow once (at ``worker_process_init``) and keeps it for every job it runs."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from service.logs import configure_logging
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)


def make_celery(settings: Settings) -> Celery:
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
        imports=["worker.tasks"],
    )
    from worker.reconciler import Reconciler

    app.steps["worker"].add(Reconciler)
    return app


app = make_celery(get_settings())


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    """Celery leaves logging to us: the same format as the API, with job ids."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@worker_process_init.connect
def _load_tensorflow(**_: Any) -> None:
    """Import Keras (and TensorFlow) once in each pool child, before its first job arrives."""
    settings = get_settings()
    if settings.keras_cache is not None:
        os.environ["KERAS_HOME"] = str(settings.keras_cache)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    log.info("pool process %d ready with Keras %s", os.getpid(), keras.__version__)
