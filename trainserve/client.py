"""The client of a running TrainServe: train, follow, predict, summarise and download, from Python."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from trainserve.errors import NotFoundError
from trainserve.experiments import Experiments
from trainserve.http import Transport
from trainserve.jobs import Job
from trainserve.models import Model, Wire
from trainserve.records import JobCreated, JobRecord, ModelRecord, Page

DEFAULT_URL = "http://127.0.0.1:8000"
_ID = re.compile(r"^[0-9a-f]{32}$")
_VERSIONED = re.compile(r"^(?P<name>.+)@(?P<version>[0-9]{1,15})$")


class Client:
    """A running TrainServe, at ``url`` (default: ``TRAINSERVE_URL``, else http://127.0.0.1:8000), with
    ``api_key`` (default: ``TRAINSERVE_API_KEY``) sent as ``Authorization: Bearer``.

    >>> client = Client()
    >>> job = client.train(model, dataset="digits", epochs=5)   # a keras.Sequential, or a request dict
    >>> job.wait()
    >>> job.model.predict(x)

    Errors are TrainServeError: a refusal is a ServiceError carrying the service's message and each problem's
    path. Use it as a context manager, or ``close()`` it, to close its connections."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("TRAINSERVE_URL") or DEFAULT_URL).rstrip("/")
        self.transport = Transport(self.url, api_key or os.environ.get("TRAINSERVE_API_KEY") or None, timeout)
        self.experiments = Experiments(self)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def train(
        self,
        request_or_model: Mapping[str, Any] | Any,
        /,
        *,
        dataset: str | Mapping[str, Any] | None = None,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Any = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        validation_split: float | None = None,
        validation_data: str | Mapping[str, Any] | None = None,
        callbacks: Sequence[Any] | None = None,
        seed: int | None = None,
        shuffle: bool | None = None,
        steps_per_execution: int | str | None = None,
        jit_compile: bool | str | None = None,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a training job (POST /train) and return it.

        Give a training request as a dict (as ``examples/*.json``), or a ``keras.Sequential`` (or a functional
        ``keras.Model`` that is a plain stack) built from the layers the service supports: it is turned into the
        request's ``model`` here, from its ``get_config()``, and anything the service cannot train as it is
        (a layer class, a non-default initializer, a regularizer, branches) is an UnsupportedKerasError naming
        the layer and the option. A compiled model gives its optimizer, loss and metrics.

        ``dataset``: a built-in's name (``"digits"``) or the request's dataset object (``{"name": "digits",
        "rescale": 1/16, "test_size": 0.2}``, ``{"id": upload_id}``). ``optimizer``: a name, a spec object or a
        ``keras.optimizers`` optimizer; ``loss`` and ``metrics`` likewise. ``callbacks``: spec objects or
        ``keras.callbacks.EarlyStopping``, ``ModelCheckpoint`` and ``ReduceLROnPlateau``. The other keywords are
        ``fit``'s. With a dict request each keyword given replaces that part of it.

        ``idempotency_key``: send the same key again (after a timeout, say) to get the first job back rather than
        a second one."""
        from trainserve.requests import train_request

        body = train_request(
            request_or_model,
            dataset=dataset,
            optimizer=optimizer,
            loss=loss,
            metrics=metrics,
            fit={
                "epochs": epochs,
                "batch_size": batch_size,
                "validation_split": validation_split,
                "validation_data": validation_data,
                "callbacks": callbacks,
                "seed": seed,
                "shuffle": shuffle,
                "steps_per_execution": steps_per_execution,
                "jit_compile": jit_compile,
            },
            name=name,
        )
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        created = cast(JobCreated, self.transport.json("POST", "/train", json=body, headers=headers))
        job = self.job(created["job_id"])
        job.created = created
        return job

    def job(self, job_id: str) -> Job:
        """A job by its id (GET /jobs/{id})."""
        return Job(self, cast(JobRecord, self.transport.json("GET", f"/jobs/{job_id}")))

    def jobs(self, *, status: str | None = None, limit: int = 20, offset: int = 0, history: str = "last") -> Page[Job]:
        """Jobs, newest first (GET /jobs): ``status`` filters, ``history="all"`` for every epoch of each."""
        params: dict[str, str | int] = {
            "limit": limit,
            "offset": offset,
            "history": history,
            **({"status": status} if status else {}),
        }
        listing = self.transport.json("GET", "/jobs", params=params)
        return Page((Job(self, record) for record in listing["data"]), listing["count"])

    def model(self, reference: str) -> Model:
        """A trained model by its id, its name (the latest version) or ``name@version``."""
        if _ID.match(reference):
            try:
                return Model(self, cast(ModelRecord, self.transport.json("GET", f"/models/{reference}")))
            except NotFoundError:
                pass  # a name may look like an id
        versioned = _VERSIONED.match(reference)
        params: dict[str, str | int] = {"name": reference, "limit": 1}
        if versioned:
            params = {"name": versioned["name"], "version": int(versioned["version"]), "limit": 1}
        found = self.transport.json("GET", "/models", params=params)["data"]
        if not found and versioned:  # a name may end in @digits
            found = self.transport.json("GET", "/models", params={"name": reference, "limit": 1})["data"]
        if not found:
            raise NotFoundError(404, "not_found", f"no model {reference!r}", [])
        return Model(self, cast(ModelRecord, found[0]))

    def _model(self, model: str | Model) -> Model:
        return model if isinstance(model, Model) else self.model(model)

    def predict(
        self, model: str | Model, x: npt.ArrayLike | Sequence[str] | bytes, *, wire: Wire = "auto"
    ) -> npt.NDArray[np.float32]:
        """A model's outputs for a batch, NumPy in and out: ``Model.predict`` of the model a reference names."""
        return self._model(model).predict(x, wire=wire)

    def summary(self, model: str | Model) -> None:
        """Print what ``model.summary()`` prints for the model a reference names."""
        self._model(model).summary()

    def download(self, model: str | Model, path: str | os.PathLike[str] | None = None) -> Any:
        """The model a reference names as a loaded ``keras.Model`` (``Model.download``)."""
        return self._model(model).download(path)

    def models(self, *, name: str | None = None, limit: int = 20, offset: int = 0) -> Page[Model]:
        """Trained models, newest first (GET /models); ``name`` for the versions of one name."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset, **({"name": name} if name else {})}
        listing = self.transport.json("GET", "/models", params=params)
        return Page((Model(self, record) for record in listing["data"]), listing["count"])

    def examples(self) -> dict[str, dict[str, Any]]:
        """The book's experiments as train requests, by name (GET /examples): ``client.train(examples[...])``."""
        listing = self.transport.json("GET", "/examples")
        return {example["key"]: example["request"] for example in listing["data"]}
