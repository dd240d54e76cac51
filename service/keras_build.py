"""Keras from a spec: build, dry-build against a dataset, compile and summarise.

The API dry-builds every request before queueing it, and the worker builds the model it fits with the same
functions, so a spec that passes the API is the model the worker trains. Importing this module loads TensorFlow.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any, TypeVar

import keras
import numpy as np

from service.datasets.builtin import DatasetInfo
from service.spec import CompileSpec, DenseLayer, EmbeddingLayer, FitSpec, LayerSpec, ModelSpec, TrainRequest

Path = tuple[str | int, ...]


class SpecError(Exception):
    """A spec Keras cannot build, or one that does not fit its dataset; each problem has its JSON path."""

    def __init__(self, problems: list[tuple[Path, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


@dataclass(frozen=True)
class DryBuild:
    total_params: int
    output_shape: tuple[int | None, ...]
    # float32 bytes of one instance's input and layer outputs: a model call on n instances needs n times this.
    activation_bytes: int
    # What the job's arrays take in the worker: float32 inputs, and labels as its loss expects them.
    data_bytes: int
    # What model.summary() says of the model built (``summarize``), when the dry build was asked for it.
    summary: dict[str, Any] | None = None


FLOAT32 = 4
# Bytes per label as each loss is fed: int64 class numbers, one float32, or a float32 per class.
LABEL_BYTES = {"sparse": 8, "binary": 4}


# TensorFlow opens a name scope per model and layer while it runs them, and its scope names allow only these.
_TF_SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.>-]*$")


def runnable_name(name: str) -> str:
    """A name TensorFlow can run under: the name itself when it can, else an ASCII form plus a short hash."""
    if _TF_SCOPE_NAME.fullmatch(name):
        return name
    ascii_part = re.sub(r"[^A-Za-z0-9_.>-]+", "_", name).strip("_.>-")
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{ascii_part}_{digest}" if ascii_part else f"n_{digest}"


# Creating a layer draws its initializers' and dropout's seeds from Python's random generator, and loading a
# stored model creates layers too: one construction at a time, so that a seeded build (``build_seeded``) draws
# exactly what its seed gives, whatever else the process builds or loads meanwhile.
_BUILDING = threading.RLock()


def load_stored_model(path: FilePath) -> keras.Model:
    """A stored ``.keras`` file as ``keras.models.load_model`` loads it (uncompiled; ``safe_mode``: no code from
    the file runs), under the lock every build holds."""
    with _BUILDING:
        return keras.models.load_model(path, compile=False, safe_mode=True)


def build_seeded(spec: ModelSpec, seed: int | None) -> keras.Sequential:
    """The model as the first one built after ``keras.utils.set_random_seed(seed)`` is: freshly initialised, the
    same every time for the same seed."""
    with _BUILDING:
        if seed is not None:
            keras.utils.set_random_seed(seed)
        return build_model(spec)


def build_model(spec: ModelSpec, names: Sequence[str] | None = None, model_name: str | None = None) -> keras.Sequential:
    """A Sequential model from the spec, built layer by layer so a failure names the layer that caused it.

    ``names``/``model_name`` replace the spec's names: the worker trains under names TensorFlow accepts
    (see ``runnable_copy``) while summaries and records keep the user's own.
    """
    with _BUILDING:
        return _build(spec, names, model_name)


def _build(spec: ModelSpec, names: Sequence[str] | None, model_name: str | None) -> keras.Sequential:
    model = keras.Sequential(name=model_name or spec.name)
    model.add(keras.Input(shape=tuple(spec.input_shape)))
    shape: list[int | None] = [None, *spec.input_shape]
    for index, layer_spec in enumerate(spec.layers):
        path: Path = ("model", *spec.layer_loc(index))
        if names is not None:
            layer_spec = layer_spec.model_copy(update={"name": names[index]})
        try:
            layer = layer_spec.build()
        except (ValueError, TypeError) as exc:
            raise SpecError([(path, f"Keras cannot create this {layer_spec.type} layer: {exc}")]) from exc
        cannot = f"{layer_spec.type} layer cannot take its input of shape {shape}"
        rank = _rank_problem(layer_spec, shape)
        if rank is not None:
            raise SpecError([(path, f"{cannot}: {rank}")])
        try:
            model.add(layer)
        except (ValueError, TypeError) as exc:
            raise SpecError([(path, f"{cannot}: {_first_line(exc)}")]) from exc
        shape = _shape(model.outputs[0].shape)
    return model


def _rank_problem(layer_spec: LayerSpec, shape: Sequence[int | None]) -> str | None:
    """Why the layer does not take inputs of this many dimensions, for a layer that takes one rank only."""
    layout = layer_spec.layout
    if layout is None or len(shape) == len(layout):
        return None
    return f"it takes {len(layout)}-D inputs ({', '.join(layout)}); this one is {len(shape)}-D"


T = TypeVar("T")


def with_fresh_names(function: Callable[[], T]) -> T:
    """``function()``, run where Keras names what it builds as in a fresh session: ``flatten``, ``dense``,
    ``dense_1``, ``sequential``, as the worker's model (built after ``clear_session``) is named.

    Keras numbers the layers and models it names per thread, and never clears those numbers by itself: in the API's
    pooled threads they keep counting from one request to the next (``dense_57``). ``clear_session`` would clear
    them for every thread at once, under whatever else the process is building or calling, so the function runs in
    a thread of its own instead, whose numbers start at zero. The caller's thread waits for it."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:  # handed to the caller's thread, which raises it
            failure.append(exc)

    thread = threading.Thread(target=run, name="trainserve-fresh-names")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def runnable_model(spec: ModelSpec, display: keras.Sequential) -> keras.Sequential:
    """``display`` itself when TensorFlow can run it under its names (the model the learner's own script would
    build, its seeded initial weights and dropout seeds included), else a ``runnable_copy``."""
    names = [display.name, *(layer.name for layer in display.layers)]
    if all(_TF_SCOPE_NAME.fullmatch(name) for name in names):
        return display
    return runnable_copy(spec, display)


def runnable_copy(spec: ModelSpec, display: keras.Sequential) -> keras.Sequential:
    """The same architecture and initial weights as ``display`` (built from ``spec``), under names TensorFlow can
    run.

    Keras on TensorFlow cannot fit or call a model whose model or layer names hold spaces or non-ASCII
    characters (``'패션 MNIST 모델' is not a valid root scope name``), though it builds and summarises it.
    """
    # Building draws each layer's initializer and dropout seeds from Python's generator, which keras.utils.
    # set_random_seed seeded: the copy puts back what it drew, so that the rest of the job draws what the learner's
    # script (one model) would.
    drawn = random.getstate()
    copy = build_model(
        spec,
        names=[runnable_name(layer.name) for layer in display.layers],
        model_name=runnable_name(display.name),
    )
    random.setstate(drawn)
    # The first model built after the seed is set starts from the weights the same script would have drawn, and its
    # dropout from the same seeds: a layer's variables are its weights and its seed generators' state.
    for target, source in zip(copy.variables, display.variables, strict=True):
        target.assign(source)
    return copy


@dataclass(frozen=True)
class ShapeEstimate:
    params: int
    activation_bytes: int
    # False when a layer's output shape cannot be worked out: the numbers are then those of the layers before it
    # (and that layer's own parameters), a lower bound, and what building the model allocates before it fails.
    complete: bool = True


def estimate(spec: ModelSpec) -> ShapeEstimate | None:
    """The model's parameter count and per-instance activation memory from shapes alone, allocating nothing; up
    to the first layer whose output shape cannot be worked out, if one cannot (building the model then says
    why)."""
    shape: tuple[int | None, ...] = (None, *spec.input_shape)
    params = 0
    outputs: list[tuple[int | None, ...]] = []
    steps = 0
    complete = False
    for layer_spec in spec.layers:
        if _rank_problem(layer_spec, shape) is not None:
            break
        try:
            layer = layer_spec.build()
        except Exception:
            break
        params += layer_spec.params(shape)
        steps += layer_spec.step_values(shape)
        try:
            shape = tuple(layer.compute_output_shape(shape))
        except Exception:
            break
        outputs.append(shape)
    else:
        complete = True
    return ShapeEstimate(params, activation_bytes(tuple(spec.input_shape), outputs, steps), complete)


def estimate_params(spec: ModelSpec) -> int | None:
    found = estimate(spec)
    return None if found is None or not found.complete else found.params


def activation_bytes(
    input_shape: tuple[int, ...], output_shapes: Sequence[Sequence[int | None]], step_values: int = 0
) -> int:
    """float32 bytes of one instance's input and of every layer's output for it, and of what recurrent layers keep
    of every step while training (``LayerSpec.step_values``)."""
    values = math.prod(input_shape) + sum(math.prod(d or 1 for d in shape[1:]) for shape in output_shapes)
    return FLOAT32 * (values + step_values)


def training_data_bytes(
    *, rows: int, input_shape: Sequence[int], compile_spec: CompileSpec, num_classes: int
) -> tuple[int, int]:
    """(inputs, labels): the bytes a job's arrays take in the worker, every split together."""
    inputs = rows * math.prod(input_shape) * FLOAT32
    per_label = LABEL_BYTES.get(compile_spec.label_encoding, num_classes * FLOAT32)
    return inputs, rows * per_label


def memory_problems(
    request: TrainRequest,
    info: DatasetInfo,
    per_instance: int,
    *,
    max_activation_bytes: int,
    max_training_data_bytes: int,
) -> list[tuple[Path, str]]:
    """Why the job would need more memory than the service gives one, counted from shapes before anything is
    allocated: one training batch's activations, and the job's arrays."""
    problems: list[tuple[Path, str]] = []
    batch = request.fit.batch_size
    if batch * per_instance > max_activation_bytes:
        fits = max_activation_bytes // per_instance
        problems.append(
            (
                ("fit", "batch_size"),
                f"a batch of {batch:,} needs about {batch * per_instance:,} bytes for the layers' outputs "
                f"({per_instance:,} per instance), more than one model call may take (TRAINSERVE_MAX_ACTIVATION_BYTES: "
                f"{max_activation_bytes:,})" + (f"; use batch_size {fits:,} or less" if fits else ""),
            )
        )
    inputs, labels = training_data_bytes(
        rows=info.rows, input_shape=info.input_shape, compile_spec=request.compile, num_classes=info.num_classes
    )
    if inputs + labels > max_training_data_bytes:
        one_hot = request.compile.label_encoding == "one_hot"
        what = (
            f"labels as one-hot rows of {info.num_classes:,} classes for loss {request.compile.loss!r}: {labels:,}"
            if one_hot
            else f"labels: {labels:,}"
        )
        hint = "; sparse_categorical_crossentropy takes class numbers instead" if one_hot else ""
        path: Path = ("compile", "loss") if one_hot and labels > inputs else ("dataset",)
        problems.append(
            (
                path,
                f"the job's arrays would take {inputs + labels:,} bytes in the worker (inputs as float32: "
                f"{inputs:,}; {what}), more than a job may (TRAINSERVE_MAX_TRAINING_DATA_BYTES: "
                f"{max_training_data_bytes:,}){hint}",
            )
        )
    return problems


def too_many_params(count: int, limit: int) -> str:
    return (
        f"the model has {count:,} parameters, more than this service allows: at most {limit:,} "
        f"(TRAINSERVE_MAX_MODEL_PARAMS)"
    )


@dataclass(frozen=True)
class MemoryLimits:
    max_activation_bytes: int
    max_training_data_bytes: int


def dry_build(
    request: TrainRequest,
    info: DatasetInfo,
    max_params: int | None = None,
    memory: MemoryLimits | None = None,
    *,
    summary: bool = False,
) -> DryBuild:
    """Build the model as the worker will and check it against the dataset, without training anything.
    A model over ``max_params``, or one that needs more memory than ``memory`` allows, is refused before its
    weights are allocated. With ``summary``, the answer also holds what ``model.summary()`` says of the model."""
    fit_problems = request.problems() + validation_problems(request, info)
    if fit_problems:
        raise SpecError(fit_problems)
    early = estimate(request.model)
    if early is not None and max_params is not None and early.params > max_params:
        raise SpecError([(("model",), too_many_params(early.params, max_params))])
    if early is not None and memory is not None:
        too_much = memory_problems(
            request,
            info,
            early.activation_bytes,
            max_activation_bytes=memory.max_activation_bytes,
            max_training_data_bytes=memory.max_training_data_bytes,
        )
        if too_much:
            raise SpecError(too_much)
    problems: list[tuple[Path, str]] = []
    if tuple(request.model.input_shape) != info.input_shape:
        problems.append(
            (
                ("model", *request.model.input_loc),
                f"input_shape {list(request.model.input_shape)} does not match dataset {info.name!r}, "
                f"whose samples have shape {list(info.input_shape)}",
            )
        )
        raise SpecError(problems)
    # A summary names what Keras names as the worker's summary will: as in a fresh session.
    model = with_fresh_names(lambda: build_model(request.model)) if summary else build_model(request.model)
    output_shape = tuple(model.outputs[0].shape)
    last: Path = ("model", *request.model.layer_loc(len(request.model.layers) - 1))
    if isinstance(request.model.layers[-1], DenseLayer):
        last = (*last, "units")
    problem = check_output(request.compile, output_shape, info)
    if problem:
        raise SpecError([(last, problem)])
    total = model.count_params()
    if max_params is not None and total > max_params:
        raise SpecError([(("model",), too_many_params(total, max_params))])
    shapes = [tuple(layer.output.shape) for layer in model.layers]
    layer_inputs = [(None, *request.model.input_shape), *shapes[:-1]]
    steps = sum(spec.step_values(shape) for spec, shape in zip(request.model.layers, layer_inputs, strict=True))
    per_instance = activation_bytes(tuple(request.model.input_shape), shapes, steps)
    if memory is not None:
        too_much = memory_problems(
            request,
            info,
            per_instance,
            max_activation_bytes=memory.max_activation_bytes,
            max_training_data_bytes=memory.max_training_data_bytes,
        )
        if too_much:
            raise SpecError(too_much)
    inputs, labels = training_data_bytes(
        rows=info.rows, input_shape=info.input_shape, compile_spec=request.compile, num_classes=info.num_classes
    )
    return DryBuild(
        total_params=total,
        output_shape=output_shape,
        activation_bytes=per_instance,
        data_bytes=inputs + labels,
        summary=summarize(model) if summary else None,
    )


def validation_problems(request: TrainRequest, info: DatasetInfo) -> list[tuple[Path, str]]:
    """Validation on the test split needs a dataset with one, or a held-out split (``test_size``); one-hot inputs
    need word indexes whose vocabulary is known."""
    found: list[tuple[Path, str]] = []
    if request.fit.validation_data == "test" and not info.test_rows and request.dataset.test_size is None:
        found.append(
            (
                ("fit", "validation_data"),
                f"dataset {info.name!r} has no test split to validate on; hold one out with dataset.test_size, or "
                "validate on rows held out of the training rows: {'size': 0.2}",
            )
        )
    reshape = request.dataset.reshape
    if reshape is not None and info.stored_shape is None:
        found.append(
            (
                ("dataset", "reshape"),
                f"{list(reshape)} holds {math.prod(reshape):,} values, but the samples of dataset {info.name!r} have "
                f"shape {list(info.input_shape)}: {math.prod(info.input_shape):,} values",
            )
        )
    first = request.model.layers[0] if request.model.layers else None
    words = info.vocabulary_size
    if (
        isinstance(first, EmbeddingLayer)
        and words is not None
        and not request.dataset.one_hot
        and first.input_dim < words
    ):
        found.append(
            (
                ("model", *request.model.layer_loc(0), "input_dim"),
                f"the word indexes of dataset {info.name!r} run from 0 to {words - 1}: input_dim must be at least "
                f"{words} (it is {first.input_dim})",
            )
        )
    if request.dataset.one_hot and info.vocabulary_size is None and request.dataset.num_words is None:
        found.append(
            (
                ("dataset", "one_hot"),
                f"dataset {info.name!r} is not word indexes of a known vocabulary: one_hot is for imdb and for "
                "uploaded .csv texts",
            )
        )
    return found


def check_output(compile_spec: CompileSpec, output_shape: tuple[int | None, ...], info: DatasetInfo) -> str | None:
    """Why the model's output cannot be trained against the dataset's labels with this loss, or None."""
    if len(output_shape) != 2:
        sequences = (
            " (a sequence's steps can also be pooled by a global pooling layer, or ended by a recurrent layer "
            "without return_sequences)"
            if len(output_shape) == 3
            else ""
        )
        return (
            f"the model's output has shape {_shape(output_shape)}; a classifier needs (batch, classes): "
            f"end with a flatten and a dense layer{sequences}"
        )
    units = output_shape[1]
    encoding = compile_spec.label_encoding
    if encoding == "binary":
        if info.num_classes != 2:
            return (
                f"loss {compile_spec.loss!r} is for two classes but dataset {info.name!r} has {info.num_classes}; "
                f"use sparse_categorical_crossentropy"
            )
        if units != 1:
            return f"loss {compile_spec.loss!r} needs 1 output unit, the last layer has {units}"
        return None
    if units != info.num_classes:
        return (
            f"the last layer has {units} units but dataset {info.name!r} has {info.num_classes} classes; "
            f"set units to {info.num_classes}"
        )
    return None


@dataclass(frozen=True)
class Execution:
    """How a job's training runs in TensorFlow: what the job records and reports as its ``execution``."""

    steps_per_execution: int
    jit_compile: bool


# 'auto' steps per execution aim at calls of about this long, with this arithmetic rate assumed: a modest CPU core's
# float32 rate, so that on faster hardware a call only gets shorter. A cancel or the time limit waits for at most
# one call.
EXECUTION_SECONDS = 0.25
ASSUMED_FLOPS = 5e9
# Beyond this many steps per call the gain is within run-to-run noise (measured on the chapter's model).
AUTO_STEPS_CAP = 128


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one sample's forward pass, from the built model: each layer's weights are used once per
    position of its output (once for Dense on a vector, once per pixel for a convolution), a recurrent layer's
    once per step of its input sequence (whether or not it returns the sequence), and an embedding's not at all
    (it looks its vectors up)."""
    total = 0
    for layer in model.layers:
        params = layer.count_params()
        if not params or isinstance(layer, keras.layers.Embedding):
            continue
        recurrent = isinstance(layer, keras.layers.RNN | keras.layers.Bidirectional)
        axes = (layer.input if recurrent else layer.output).shape[1:-1]
        positions = math.prod(int(d) for d in axes if d is not None)
        total += params * max(positions, 1)
    return total


def steps_per_epoch(rows: int, fit: FitSpec) -> int:
    trained = rows - int(rows * fit.validation_split)
    return max(1, math.ceil(trained / fit.batch_size))


def plan_steps(model: keras.Model, fit: FitSpec, rows: int) -> int:
    """Steps per call into TensorFlow: the request's own, or for 'auto' as many as take about
    ``EXECUTION_SECONDS`` (forward and backward pass ≈ 6 flops per multiply-add per sample), never more than an
    epoch's steps."""
    if fit.steps_per_execution != "auto":
        return fit.steps_per_execution
    step_seconds = 6 * multiply_adds(model) * fit.batch_size / ASSUMED_FLOPS
    steps = int(EXECUTION_SECONDS / step_seconds) if step_seconds > 0 else AUTO_STEPS_CAP
    return max(1, min(steps, AUTO_STEPS_CAP, steps_per_epoch(rows, fit)))


def compile_model(model: keras.Model, spec: CompileSpec, fit: FitSpec | None = None, rows: int = 0) -> Execution:
    """Compile as Keras does from the spec, and say how its training steps will run: for a job (``fit`` and the
    number of training ``rows``) as its fit options ask, with 'auto' resolved (XLA by Keras' own rule); without,
    one step per call and no XLA."""
    steps = 1 if fit is None else plan_steps(model, fit, rows)
    model.compile(
        optimizer=spec.optimizer.build(),
        loss=spec.loss,
        metrics=spec.build_metrics(),
        steps_per_execution=steps,
        jit_compile=False if fit is None else fit.jit_compile,
    )
    return Execution(steps_per_execution=int(model.steps_per_execution), jit_compile=bool(model.jit_compile))


def labels_for_loss(y: np.ndarray[Any, Any], spec: CompileSpec, num_classes: int) -> np.ndarray[Any, Any]:
    """Integer class labels as the loss expects them: integers, 0/1 floats or one-hot rows."""
    if spec.label_encoding == "sparse":
        return y.astype(np.int64)
    if spec.label_encoding == "binary":
        return y.astype(np.float32).reshape(-1, 1)
    one_hot: np.ndarray[Any, Any] = np.eye(num_classes, dtype=np.float32)[y]
    return one_hot


def summarize(model: keras.Model) -> dict[str, Any]:
    """What ``model.summary()`` prints, as text and as numbers taken from the same model."""
    printed: list[str] = []
    model.summary(print_fn=lambda text, **_: printed.append(text))
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    return {
        "name": model.name,
        "layers": [
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": _shape(layer.output.shape),
                "params": layer.count_params(),
            }
            for layer in model.layers
        ],
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "text": "".join(printed),
    }


def _count(weights: list[Any]) -> int:
    unique = {id(w): w for w in weights}
    return sum(int(np.prod(w.shape)) for w in unique.values())


def _shape(shape: Any) -> list[int | None]:
    return [None if d is None else int(d) for d in shape]


_TERMINAL_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The first line of Keras' message that says something: past its "Exception encountered when calling
    ...", without its terminal colours."""
    lines = (line.strip() for line in _TERMINAL_COLOURS.sub("", str(exc)).splitlines())
    useful = [line for line in lines if line and not line.startswith("Exception encountered when calling")]
    return useful[0] if useful else type(exc).__name__
