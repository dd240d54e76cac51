"""One exception family for everything the client raises: the service's refusals carry its error body (the message
and each problem's path), the rest say what happened in a sentence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class TrainServeError(Exception):
    """Anything that went wrong talking to TrainServe or with what it ran."""


@dataclass(frozen=True)
class Problem:
    """One problem of a refused request: where (``model.layers[1].activation``), as a path and as keys, and what."""

    path: str
    loc: tuple[str | int, ...]
    message: str


class ServiceError(TrainServeError):
    """The service answered with an error: its HTTP status, the error's ``type``, ``message`` and ``problems``
    (``{"error": {"type", "message", "errors": [{"path", "loc", "message"}]}}``, as the API writes every error).
    ``str()`` is the message followed by each problem with its path, a line each."""

    def __init__(self, status: int, kind: str, message: str, problems: list[Problem], body: Any = None) -> None:
        self.status = status
        self.type = kind
        self.message = message
        self.problems = problems
        self.body = body
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"HTTP {self.status}: "
        if len(self.problems) == 1 and self.problems[0].message == self.message:
            # One problem is its own summary: one line, with its path when it has one.
            path = self.problems[0].path
            return head + (f"{path}: " if path else "") + self.message
        lines = [head + self.message]
        lines += [f"  {p.path or '(request)'}: {p.message}" for p in self.problems]
        return "\n".join(lines)

    @property
    def paths(self) -> list[str]:
        """Where each problem is, e.g. ``["model.layers[1].activation"]``."""
        return [problem.path for problem in self.problems]


class InvalidRequestError(ServiceError):
    """422: the request is wrong; ``problems`` says where and why."""


class NotFoundError(ServiceError):
    """404: no such job, model, experiment or dataset."""


class AuthenticationError(ServiceError):
    """401 or 403: no API key, a wrong one, or a read-only one used to change something."""


class ConflictError(ServiceError):
    """409: not in this state (cancelling a finished job, deleting a dataset a job uses, …)."""


_BY_STATUS: dict[int, type[ServiceError]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
}


def error_from_response(response: httpx.Response) -> ServiceError:
    """The error a response with a status of 400 or more stands for, read from the API's error shape."""
    status = response.status_code
    cls = _BY_STATUS.get(status, ServiceError)
    try:
        body = response.json()
    except ValueError:
        return cls(status, "http_error", response.text[:500], [])
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return cls(status, "http_error", str(body)[:500], [], body)
    problems = [
        Problem(
            path=str(item.get("path") or ""),
            loc=tuple(item.get("loc") or ()),
            message=str(item.get("message", "")),
        )
        for item in error.get("errors") or []
        if isinstance(item, dict)
    ]
    return cls(status, str(error.get("type", "error")), str(error.get("message", "")), problems, body)


class UnreachableError(TrainServeError):
    """The service could not be reached (not running, wrong URL, network down) or its event stream kept
    failing."""


class JobEndedError(TrainServeError):
    """A job ended without a model: ``job`` is its last record."""

    def __init__(self, message: str, job: Any) -> None:
        self.job = job
        super().__init__(message)


class JobFailedError(JobEndedError):
    """The job failed: the message has the error's type and message, as the job records them."""


class JobCancelledError(JobEndedError):
    """The job was cancelled before it published a model."""


class ExperimentEndedError(TrainServeError):
    """An experiment failed or was cancelled: ``experiment`` is its last record."""

    def __init__(self, message: str, experiment: Any) -> None:
        self.experiment = experiment
        super().__init__(message)


class WaitTimeoutError(TrainServeError, TimeoutError):
    """``wait(timeout=...)`` ran out before the job or experiment ended; it goes on."""


class IntegrityError(TrainServeError):
    """A downloaded file is not the one the service recorded (its sha256 differs)."""


class UnsupportedKerasError(TrainServeError, ValueError):
    """A Keras model, optimizer, loss, metric or callback that this service cannot train as it is: each problem
    names the layer (or object) and the option, and says what is supported."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        head = "this Keras model cannot be trained here as it is" if len(problems) > 1 else problems[0]
        super().__init__(head if len(problems) == 1 else "\n".join([head + ":", *(f"  {p}" for p in problems)]))
