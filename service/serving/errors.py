"""What can go wrong answering a prediction, one class per failure. Each protocol's codec renders them its own way
(status, format, wording); ``loc`` is where in the request the problem is, for the protocols that say so."""

from __future__ import annotations

Loc = tuple[str | int, ...]


class ServingError(Exception):
    """``problems``: each thing wrong with the request and where, when there are several (the first is ``loc``)."""

    def __init__(self, message: str, loc: Loc = (), problems: list[tuple[Loc, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.problems = problems or [(loc, message)]


class ModelNotFoundError(ServingError):
    """No model answers to the reference (id, name, name and version)."""


class InvalidInputError(ServingError):
    """The request's inputs are not what the model takes: shape, type, values, or a malformed body."""


class TooManyInstancesError(ServingError):
    """More instances in one request than the service takes (TRAINSERVE_MAX_PREDICT_INSTANCES)."""


class StoreIntegrityError(ServingError):
    """The model's stored file is missing, or is not the file that was saved (its sha256 differs)."""


class ServiceUnavailableError(ServingError):
    """The database that names the models cannot be reached now (a restart, say); models already loaded still
    answer."""
