"""Logging for every process: plain text, or one JSON object per line (TRAINSERVE_LOG_FORMAT=json), with the id of
the job being trained on every line a worker writes while it trains."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

current_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(job)s: %(message)s"


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every record logged inside carries ``job_id``."""
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job_id = getattr(record, "job_id", None) or current_job_id.get()
        record.job_id = job_id
        record.job = f" [job {job_id}]" if job_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            entry["job_id"] = job_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Send every logger (uvicorn's and Celery's included) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Alembic narrates every start at INFO; service.db says when a migration ran.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
