"""A job's training state at the end of an epoch, as one checkpoint file holds it, and putting it back.

One ``.npz`` (``np.savez``, read back with ``allow_pickle=False``: a file in the store is data, never code):
``model_<i>`` for every ``model.variables`` (weights, and the dropout layers' seed-generator states, so a seeded
job draws after resuming what it would have drawn), ``optimizer_<i>`` for every ``model.optimizer.variables``
(iterations, which drive a learning-rate schedule, the learning rate a plateau lowered, the slots),
``callback_<c>_<i>`` for a callback's arrays (early stopping's best weights), ``callback_<c>_file`` for the bytes
of the file a ``ModelCheckpoint`` kept, and ``state``: UTF-8 JSON of the rest (the epoch, every epoch's logs so
far, each callback's counters and best values).

Importing this module loads Keras, so only pool children import it.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import keras
import numpy as np
from numpy.lib.npyio import NpzFile

from service.store import Store, checkpoint_key

# Bumped when the layout changes: a checkpoint of another layout is not resumed from (the job starts over).
FORMAT = 1

Array = np.ndarray[Any, Any]


class CheckpointError(Exception):
    """The checkpoint cannot be resumed from: unreadable, or not of this job's model and callbacks."""


@runtime_checkable
class KeepsState(Protocol):
    """A callback of the service's own whose state a resumed job needs: plain JSON values."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def restore_checkpoint_state(self, values: dict[str, Any]) -> None: ...


@dataclass
class CallbackState:
    kind: str  # the callback's class name: a checkpoint is put back only into the same callbacks
    values: dict[str, Any] = field(default_factory=dict)
    arrays: list[Array] = field(default_factory=list)
    file: bytes | None = None


@dataclass
class Checkpoint:
    epoch: int  # epochs finished, counted from 1
    history: list[dict[str, float]]  # each finished epoch's logs, in order
    stopped: bool  # a callback (early stopping) ended training at this epoch
    model: list[Array]
    optimizer: list[Array]
    callbacks: list[CallbackState]

    def arrays(self) -> dict[str, Array]:
        """What ``np.savez`` writes."""
        out = {f"model_{i}": a for i, a in enumerate(self.model)}
        out |= {f"optimizer_{i}": a for i, a in enumerate(self.optimizer)}
        states = []
        for c, state in enumerate(self.callbacks):
            out |= {f"callback_{c}_{i}": a for i, a in enumerate(state.arrays)}
            if state.file is not None:
                out[f"callback_{c}_file"] = np.frombuffer(state.file, dtype=np.uint8)
            states.append(
                {
                    "kind": state.kind,
                    "values": state.values,
                    "arrays": len(state.arrays),
                    "file": state.file is not None,
                }
            )
        header = {
            "format": FORMAT,
            "epoch": self.epoch,
            "history": self.history,
            "stopped": self.stopped,
            "model": len(self.model),
            "optimizer": len(self.optimizer),
            "callbacks": states,
        }
        out["state"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        return out


def expected_bytes(model: Any, callbacks: list[Any]) -> int:
    """What ``capture`` would hold, counted without copying anything: the arrays' bytes (the JSON aside)."""
    variables = [*model.variables, *model.optimizer.variables]
    total = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables)
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights is not None:
            total += sum(np.asarray(w).nbytes for w in callback.best_weights)
        elif isinstance(callback, keras.callbacks.ModelCheckpoint):
            path = Path(callback.filepath)
            total += path.stat().st_size if path.is_file() else 0
    return int(total)


def write(arrays: dict[str, Array], f: BinaryIO) -> None:
    named: dict[str, Any] = arrays  # savez takes its arrays as keywords beside its own
    np.savez(f, allow_pickle=False, **named)


def read(store: Store, record: dict[str, Any]) -> Checkpoint:
    """The checkpoint a job's record names, if its file is the one recorded (by its sha256)."""
    content = store.read(checkpoint_key(record["file"]), record["sha256"], f"checkpoint of epoch {record['epoch']}")
    try:
        archive = np.load(io.BytesIO(content), allow_pickle=False)
        if not isinstance(archive, NpzFile):
            raise CheckpointError("the checkpoint file is not an .npz archive")
        with archive:
            checkpoint = _decode(archive)
    except (ValueError, KeyError, OSError) as exc:  # a zip's errors are ValueErrors (BadZipFile) or OSErrors
        raise CheckpointError(f"the checkpoint file cannot be read: {exc}") from exc
    if checkpoint.epoch != record["epoch"]:
        raise CheckpointError(f"the checkpoint file is of epoch {checkpoint.epoch}, its record says {record['epoch']}")
    return checkpoint


def _decode(archive: NpzFile) -> Checkpoint:
    header = json.loads(archive["state"].tobytes())
    if header.get("format") != FORMAT:
        raise CheckpointError(f"the checkpoint has layout {header.get('format')!r}, this worker writes {FORMAT}")
    callbacks = []
    for c, state in enumerate(header["callbacks"]):
        arrays = [archive[f"callback_{c}_{i}"] for i in range(state["arrays"])]
        file = archive[f"callback_{c}_file"].tobytes() if state["file"] else None
        callbacks.append(CallbackState(state["kind"], state["values"], arrays, file))
    return Checkpoint(
        epoch=int(header["epoch"]),
        history=header["history"],
        stopped=bool(header["stopped"]),
        model=[archive[f"model_{i}"] for i in range(header["model"])],
        optimizer=[archive[f"optimizer_{i}"] for i in range(header["optimizer"])],
        callbacks=callbacks,
    )


def capture(
    model: Any, callbacks: list[Any], *, epoch: int, history: list[dict[str, float]], stopped: bool
) -> Checkpoint:
    """The state of a model being fitted and of its callbacks, at the end of an epoch."""
    return Checkpoint(
        epoch=epoch,
        history=[dict(logs) for logs in history],
        stopped=stopped,
        model=[_numpy(v) for v in model.variables],
        optimizer=[_numpy(v) for v in model.optimizer.variables],
        callbacks=[_callback_state(callback) for callback in callbacks],
    )


def restore_model(model: Any, checkpoint: Checkpoint, callbacks: list[Any]) -> None:
    """Put the checkpoint's variables into a freshly built and compiled model and its optimizer, once all of them
    are known to fit: a checkpoint that does not fit changes nothing (the job starts over on the model as built).
    Its callbacks are checked here too, and restored by ``restore_callbacks`` once fit() has reset them."""
    # Built now, as fit() would build it, so that its variables exist to be assigned.
    model.optimizer.build(model.trainable_variables)
    _check(model.variables, checkpoint.model, "model")
    _check(model.optimizer.variables, checkpoint.optimizer, "optimizer")
    kinds = [type(callback).__name__ for callback in callbacks]
    if kinds != [state.kind for state in checkpoint.callbacks]:
        raise CheckpointError(f"the checkpoint is of callbacks {[s.kind for s in checkpoint.callbacks]}, not {kinds}")
    weights = [tuple(w.shape) for w in model.weights]
    for state in checkpoint.callbacks:
        if state.arrays and [a.shape for a in state.arrays] != weights:
            raise CheckpointError(f"the {state.kind} weights in the checkpoint are not of this model's shapes")
    for variable, value in zip(model.variables, checkpoint.model, strict=True):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, checkpoint.optimizer, strict=True):
        variable.assign(value)


def restore_callbacks(callbacks: list[Any], checkpoint: Checkpoint) -> None:
    """Put the callbacks' state back: after their ``on_train_begin``, which resets Keras' own."""
    for callback, state in zip(callbacks, checkpoint.callbacks, strict=True):
        _restore_callback(callback, state)


def _numpy(variable: Any) -> Array:
    return np.array(keras.ops.convert_to_numpy(variable))


def _check(variables: list[Any], arrays: list[Array], what: str) -> None:
    if len(variables) != len(arrays):
        raise CheckpointError(f"the checkpoint has {len(arrays)} {what} variables, the {what} {len(variables)}")
    for variable, array in zip(variables, arrays, strict=True):
        if tuple(variable.shape) != array.shape or np.dtype(variable.dtype) != array.dtype:
            raise CheckpointError(
                f"{what} variable {variable.path} is {tuple(variable.shape)} {variable.dtype}, "
                f"{array.shape} {array.dtype} in the checkpoint"
            )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _callback_state(callback: Any) -> CallbackState:
    kind = type(callback).__name__
    if isinstance(callback, keras.callbacks.EarlyStopping):
        weights = callback.best_weights
        values = {
            "wait": int(callback.wait),
            "stopped_epoch": int(callback.stopped_epoch),
            "best": _number(callback.best),
            "best_epoch": int(callback.best_epoch),
            "best_weights": weights is not None,
        }
        return CallbackState(kind, values, [] if weights is None else [np.array(w) for w in weights])
    if isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        values = {
            "wait": int(callback.wait),
            "cooldown_counter": int(callback.cooldown_counter),
            "best": _number(callback.best),
        }
        return CallbackState(kind, values)
    if isinstance(callback, keras.callbacks.ModelCheckpoint):
        path = Path(callback.filepath)
        return CallbackState(kind, {"best": _number(callback.best)}, file=path.read_bytes() if path.is_file() else None)
    if isinstance(callback, KeepsState):
        return CallbackState(kind, callback.checkpoint_state())
    return CallbackState(kind)


def _restore_callback(callback: Any, state: CallbackState) -> None:
    values = state.values
    if isinstance(callback, keras.callbacks.EarlyStopping):
        callback.wait = values["wait"]
        callback.stopped_epoch = values["stopped_epoch"]
        callback.best = values["best"]
        callback.best_epoch = values["best_epoch"]
        callback.best_weights = list(state.arrays) if values["best_weights"] else None
    elif isinstance(callback, keras.callbacks.ReduceLROnPlateau):
        callback.wait = values["wait"]
        callback.cooldown_counter = values["cooldown_counter"]
        callback.best = values["best"]
    elif isinstance(callback, keras.callbacks.ModelCheckpoint):
        callback.best = values["best"]
        path = Path(callback.filepath)
        if state.file is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(state.file)
    elif isinstance(callback, KeepsState):
        callback.restore_checkpoint_state(values)
