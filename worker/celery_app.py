"""The Celery application. Importing it never loads TensorFlow: the Celery parent process forks pool children,
and each child loads TensorFlow once (at ``worker_process_init``) and keeps it for every job it runs."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from service.logs import configure_logging
from service.queue import make_celery
from service.settings import Settings, get_settings
from worker.reconciler import Presence, Reconciler

log = logging.getLogger(__name__)


def make_worker_app(settings: Settings) -> Celery:
    """The queue's Celery app, with the worker's tasks and its reconciler."""
    app = make_celery(settings)
    app.conf.imports = ["worker.tasks"]
    app.steps["worker"].add(Reconciler)
    app.steps["worker"].add(Presence)
    return app


app = make_worker_app(get_settings())


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

    if settings.worker_accelerator == "gpu":
        # TensorFlow takes nearly all of a GPU's memory at its first use unless told to grow into it; and what it
        # took, it keeps until the process ends (hence one job per process on these workers).
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    log.info("pool process %d ready with Keras %s", os.getpid(), keras.__version__)
