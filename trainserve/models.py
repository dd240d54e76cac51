"""A trained model of the service: predictions with NumPy in and out, its summary, and the model itself."""

from __future__ import annotations

import hashlib
import html
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from trainserve import display
from trainserve.errors import IntegrityError
from trainserve.records import ModelRecord

if TYPE_CHECKING:
    from trainserve.client import Client

NPY = "application/x-npy"
# Batches of at most this many values go as JSON, larger ones as .npy (smaller, and parsed in place).
JSON_MAX_VALUES = 8192
# A predict request carries at most this many instances (the service's default TRAINSERVE_MAX_PREDICT_INSTANCES)
# and at most this many bytes of float32 instances: a larger batch goes in several requests.
MAX_INSTANCES = 10_000
MAX_REQUEST_BYTES = 32 * 2**20

Wire = Literal["auto", "json", "npy"]


@dataclass(frozen=True)
class Predictions:
    """``predict`` with the classes: the model's outputs, each instance's class, and its label when the dataset
    has class names."""

    predictions: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]
    labels: list[str] | None


class Summary(str):
    """What ``model.summary()`` prints: a str, shown in a notebook as the table Keras prints."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        return display.pre_html(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


class Model:
    """A model the service trained: ``job.model``, or ``client.model(id | "name" | "name@3")``.

    ``predict(x)`` answers NumPy arrays as Keras' ``model.predict`` does, computed by the service; inputs are in
    the dataset's own units (the service applies the model's ``rescale``). ``download()`` is the model itself."""

    def __init__(self, client: Client, record: ModelRecord) -> None:
        self._client = client
        self.info = record
        """GET /models/{id}: name and version, spec, dataset, metrics, evaluation, class names, sha256."""
        self._summary: Summary | None = None

    @property
    def id(self) -> str:
        return self.info["model_id"]

    @property
    def name(self) -> str:
        return self.info["name"]

    @property
    def version(self) -> int:
        return self.info["version"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.info["input_shape"])

    @property
    def rescale(self) -> float | None:
        """What the service multiplies inputs by before the model sees them (the request's ``dataset.rescale``):
        a downloaded model wants ``x * rescale``."""
        rescale = self.info["dataset"].get("rescale")
        return None if rescale is None else float(rescale)

    @property
    def class_names(self) -> list[str] | None:
        return self.info["class_names"]

    def predict(self, x: npt.ArrayLike | Sequence[str] | bytes, *, wire: Wire = "auto") -> npt.NDArray[np.float32]:
        """The model's outputs for a batch of instances, shape (n, outputs), float32.

        ``x`` is an array of shape (n, *input_shape) in the dataset's units (any numeric dtype), a list of texts
        for a model trained on texts, or the bytes of a .npy file. Small batches go as JSON and large ones as
        .npy both ways (``wire`` chooses); a batch larger than one request carries is sent in several."""
        if isinstance(x, bytes):
            return self._predict_npy(x)
        texts = _texts(x)
        if texts is not None:
            return np.asarray(self._predict_json(texts)["predictions"], dtype=np.float32)
        batch = _batch(x)
        outputs = [self._predict_chunk(chunk, wire) for chunk in _chunks(batch)]
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

    def classify(self, x: npt.ArrayLike | Sequence[str] | bytes) -> Predictions:
        """``predict`` with each instance's class and label, as POST /predict answers them in JSON."""
        if isinstance(x, bytes):
            answers = [self._post_npy(x, accept="application/json").json()]
        else:
            texts = _texts(x)
            if texts is not None:
                answers = [self._predict_json(texts)]
            else:
                answers = [
                    self._post_npy(_npy_bytes(chunk), accept="application/json").json() for chunk in _chunks(_batch(x))
                ]
        labels = [label for answer in answers for label in answer.get("labels") or []]
        return Predictions(
            predictions=np.asarray([row for a in answers for row in a["predictions"]], dtype=np.float32),
            classes=np.asarray([c for a in answers for c in a["classes"]], dtype=np.int64),
            labels=labels if any(a.get("labels") for a in answers) else None,
        )

    def _predict_chunk(self, chunk: npt.NDArray[Any], wire: Wire) -> npt.NDArray[np.float32]:
        if wire == "json" or (wire == "auto" and chunk.size <= JSON_MAX_VALUES):
            return np.asarray(self._predict_json(chunk.tolist())["predictions"], dtype=np.float32)
        return self._predict_npy(_npy_bytes(chunk))

    def _predict_json(self, instances: list[Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._client.transport.json(
            "POST", "/predict", json={"model_id": self.id, "instances": instances}
        )
        return answer

    def _post_npy(self, body: bytes, accept: str) -> Any:
        return self._client.transport.request(
            "POST",
            "/predict",
            params={"model_id": self.id},
            content=body,
            headers={"Content-Type": NPY, "Accept": accept},
        )

    def _predict_npy(self, body: bytes) -> npt.NDArray[np.float32]:
        response = self._post_npy(body, accept=NPY)
        return np.asarray(np.load(io.BytesIO(response.content), allow_pickle=False), dtype=np.float32)

    @property
    def summary_text(self) -> Summary:
        """The text Keras' ``model.summary()`` prints for this model (GET /models/{id}/summary?format=text)."""
        if self._summary is None:
            response = self._client.transport.request("GET", f"/models/{self.id}/summary", params={"format": "text"})
            self._summary = Summary(response.text)
        return self._summary

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> None:
        """Print the summary as Keras' ``model.summary()`` does (in a notebook, as its table); ``print_fn`` gets
        the text instead."""
        if print_fn is not None:
            print_fn(self.summary_text)
        elif display.in_notebook():
            display.show(self.summary_text)
        else:
            print(self.summary_text, end="")

    def download(self, path: str | os.PathLike[str] | None = None, *, compile: bool = True) -> Any:
        """The trained model as a loaded ``keras.Model``, from its ``.keras`` file (GET /models/{id}/download),
        whose sha256 is checked against the model's record first. With ``path`` (a ``.keras`` file or a
        directory) the file is kept there; otherwise it is read from a temporary file and removed.

        Its input is the model's own: the service's ``rescale`` is not inside, so give it ``x * model.rescale``.
        Names TensorFlow cannot run under are stored in an ASCII form (``info["keras_names"]``)."""
        import keras

        if path is None:
            with tempfile.TemporaryDirectory(prefix="trainserve-") as folder:
                file = Path(folder) / f"{self.id}.keras"
                self._fetch(file)
                return keras.models.load_model(file, compile=compile)
        target = Path(path)
        if target.is_dir():
            target = target / f"{self.id}.keras"
        if target.suffix != ".keras":
            raise ValueError(f"{target}: a Keras model file ends with .keras")
        self._fetch(target)
        return keras.models.load_model(target, compile=compile)

    def _fetch(self, target: Path) -> None:
        """Write the model's file to ``target`` (whole, or not at all) after checking its sha256."""
        digest = hashlib.sha256()
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as out:

                def write(chunk: bytes) -> None:
                    digest.update(chunk)
                    out.write(chunk)

                self._client.transport.download(f"/models/{self.id}/download", write)
            if digest.hexdigest() != self.info["sha256"]:
                raise IntegrityError(
                    f"the file of model {self.id} has sha256 {digest.hexdigest()}, not the recorded "
                    f"{self.info['sha256']}: it was not kept"
                )
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"Model(id={self.id!r}, name={self.name!r}, version={self.version})"

    def _repr_html_(self) -> str:
        info = self.info
        dataset = info["dataset"].get("name") or info["dataset"].get("id") or ""
        lines = [
            f"<b>{html.escape(self.name)}</b> version {self.version} <code>{self.id}</code>",
            f"{info['total_params']:,} parameters · input {tuple(info['input_shape'])} · dataset "
            f"{html.escape(str(dataset))}",
        ]
        if info["evaluation"]:
            lines.append("held-out: " + display.pairs_html(info["evaluation"]))
        if info["class_names"]:
            lines.append("classes: " + html.escape(", ".join(info["class_names"])))
        return "<div>" + "<br>".join(lines) + "</div>"


def _texts(x: Any) -> list[str] | None:
    """Raw texts, for a model trained on texts; None for numbers."""
    if isinstance(x, str):
        raise TypeError("give a list of texts, one per instance (a single str is one text, not a batch)")
    if isinstance(x, np.ndarray):
        return [str(t) for t in x.tolist()] if x.dtype.kind in "UO" and x.ndim == 1 else None
    if isinstance(x, list | tuple) and x and all(isinstance(t, str) for t in x):
        return list(x)
    return None


def _batch(x: npt.ArrayLike) -> npt.NDArray[Any]:
    batch = np.asarray(x)
    if batch.dtype.kind not in "biuf":
        raise TypeError(f"instances must be numbers (or texts for a text model), not an array of {batch.dtype}")
    if batch.ndim == 0 or len(batch) == 0:
        raise ValueError("give a batch: an array of shape (n, *input_shape) with n ≥ 1")
    return batch


def _chunks(batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
    row_bytes = max(1, 4 * int(np.prod(batch.shape[1:], dtype=np.int64)))
    rows = max(1, min(MAX_INSTANCES, MAX_REQUEST_BYTES // row_bytes))
    return [batch[start : start + rows] for start in range(0, len(batch), rows)]


def _npy_bytes(batch: npt.NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(batch), allow_pickle=False)
    return buffer.getvalue()
