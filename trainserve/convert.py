"""A model written in Keras as the request's parts, read on the client from ``get_config()``.

The allow-list is the spec's own registry (``service.spec``): every layer, optimizer, schedule and callback class
there names the Keras class its ``build()`` makes (``keras_class``). A Keras object of one of those classes becomes
that spec: its options of the same names as the spec's fields are taken (``keras_options``), the spec is
validated, built, and every option of the rebuilt object's config must equal the original's. So an option the spec
does not carry is accepted only at the value the service would give it anyway (a ``he_normal`` initializer, a
regularizer or a frozen layer are refused, with the layer's name and the option), and the service, which builds
from the spec alone, trains the same model. The server never sees a Keras config.

Keras is not imported here: it is already loaded by whoever holds a Keras object, and the specs import it inside
``build()``."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np
from pydantic import BaseModel, ValidationError

from service.spec import (
    CALLBACK_TYPES,
    LAYER_TYPES,
    LOSSES,
    METRICS,
    OPTIMIZER_TYPES,
    SCHEDULE_TYPES,
    SHAPE_TAGS,
    CheckpointCallback,
    InputLayer,
    ModelSpec,
)
from service.spec.base import format_path
from trainserve.errors import UnsupportedKerasError

LAYERS: dict[str, type[BaseModel]] = {cls.keras_class: cls for cls in LAYER_TYPES if cls is not InputLayer}
INPUTS: dict[str, type[BaseModel]] = {InputLayer.keras_class: InputLayer}
OPTIMIZERS: dict[str, type[BaseModel]] = {cls.keras_class: cls for cls in OPTIMIZER_TYPES}
SCHEDULES: dict[str, type[BaseModel]] = {cls.keras_class: cls for cls in SCHEDULE_TYPES}
CALLBACKS = {cls.keras_class: cls for cls in CALLBACK_TYPES}
# Where each kind of nested Keras object is looked up, by the module Keras serialises it from.
_NESTED = {"keras.layers": LAYERS, "keras.optimizers.schedules": SCHEDULES}
_MISSING = object()
# Compile options the request has no place for, at the value they must have.
_COMPILE_DEFAULTS = {"loss_weights": None, "weighted_metrics": None}


def _tag(cls: type[BaseModel]) -> str:
    tag: str = get_args(cls.model_fields["type"].annotation)[0]
    return tag


# The members' tags Pydantic puts in the location of an error inside a union.
_TAGS = frozenset(_tag(cls) for cls in (*LAYER_TYPES, *OPTIMIZER_TYPES, *SCHEDULE_TYPES)) | SHAPE_TAGS


def model_spec(model: Any) -> dict[str, Any]:
    """The request's ``model`` for a ``keras.Sequential``, or a functional ``keras.Model`` that is a plain stack
    (one input, each layer feeding the next, one output): ``{"name", "input_shape", "layers"}``. Raises
    UnsupportedKerasError listing every layer and option the service cannot train as it is."""
    config = model.get_config() if hasattr(model, "get_config") else dict(model)
    name = str(config.get("name", "model"))
    problems: list[str] = []
    entries = config.get("layers")
    if not isinstance(entries, list):
        raise UnsupportedKerasError(
            [
                f"model {name!r}: only a keras.Sequential, or a functional keras.Model that is a plain stack of "
                "layers, can be trained here (its get_config() has no layers: a subclassed model?)"
            ]
        )
    if config.get("trainable", True) is not True:
        problems.append(f"model {name!r}: trainable=False is not supported here: the service trains every layer")
    if "input_layers" in config:
        entries = _plain_stack(config, problems)
        if not entries:
            raise UnsupportedKerasError(problems)
    else:
        _check_dtype(config, name, problems)
    input_shape: list[int] | None = None
    if entries and entries[0].get("class_name") == "InputLayer":
        given = _from_keras(INPUTS, entries[0], "the input", problems)
        input_shape = None if given is None else given["shape"]
        entries = entries[1:]
    elif isinstance(config.get("build_input_shape"), list | tuple):
        input_shape = [int(d) for d in config["build_input_shape"][1:]]
    else:
        problems.append(
            f"model {name!r} has no input shape yet: begin it with keras.Input(shape=...) (as the book does), or "
            "build it"
        )
    layers = []
    for entry in entries:
        layer = _from_keras(LAYERS, entry, _layer_label(entry), problems, kind="layers")
        if layer is not None:
            layers.append(layer)
    if problems:
        raise UnsupportedKerasError(problems)
    spec = {"name": name, "input_shape": input_shape, "layers": layers}
    try:
        ModelSpec.model_validate(spec)
    except ValidationError as exc:
        raise UnsupportedKerasError([f"model {name!r}: {_located(error)}" for error in exc.errors()]) from exc
    return spec


def compile_spec(model: Any) -> dict[str, Any]:
    """The request's ``compile`` from a compiled model (``optimizer``, ``loss``, ``metrics``), and its
    ``steps_per_execution`` when it is not Keras' default of 1, as ``"fit"``; empty for a model not compiled."""
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if not config:
        return {}
    problems: list[str] = []
    for key, default in _COMPILE_DEFAULTS.items():
        if config.get(key, default) != default:
            problems.append(f"compile: {key}={config[key]!r} is not supported here")
    if problems:
        raise UnsupportedKerasError(problems)
    parts: dict[str, Any] = {"optimizer": config["optimizer"], "loss": config.get("loss"), "metrics": None}
    if config.get("metrics") is not None:
        parts["metrics"] = config["metrics"]
    steps = config.get("steps_per_execution", 1)
    if steps not in (1, None):
        parts["fit"] = {"steps_per_execution": steps}
    return parts


def optimizer_spec(optimizer: Any) -> str | dict[str, Any]:
    """A name or spec object as it is; a ``keras.optimizers`` optimizer (or its serialised form) as the spec
    object of its class, with its schedule if its learning rate is one."""
    if isinstance(optimizer, str):
        return optimizer
    serialized = _serialize(optimizer)
    if not _is_serialized(serialized):
        return dict(optimizer)
    problems: list[str] = []
    where = f"optimizer {serialized['class_name']}"
    spec = _from_keras(OPTIMIZERS, serialized, where, problems, kind="optimizers", unchecked={"name"})
    if problems or spec is None:
        raise UnsupportedKerasError(problems)
    return spec


def loss_spec(loss: Any) -> str:
    """A loss by its name: a name as it is, a ``keras.losses`` function or object (at its defaults) by its own."""
    if isinstance(loss, str):
        return loss
    return _named(loss, LOSSES, "keras.losses", "loss")


def metrics_spec(metrics: Any) -> list[str]:
    """Metrics by their names: names as they are, ``keras.metrics`` objects (at their defaults) by their own."""
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        metrics = [metrics]
    return [m if isinstance(m, str) else _named(m, METRICS, "keras.metrics", "metric") for m in metrics]


def callback_spec(callback: Any) -> dict[str, Any]:
    """A spec object as it is; a ``keras.callbacks.EarlyStopping``, ``ModelCheckpoint`` or ``ReduceLROnPlateau``
    as the spec object of its class. Keras callbacks have no config: their options are read from the attributes
    their constructors set, and checked against the callback the spec builds."""
    if isinstance(callback, Mapping):
        return dict(callback)
    import keras

    class_name = type(callback).__name__
    cls = CALLBACKS.get(class_name)
    if cls is None or type(callback) is not getattr(keras.callbacks, cls.keras_class, None):
        supported = ", ".join(f"keras.callbacks.{name}" for name in CALLBACKS)
        raise UnsupportedKerasError([f"callback {class_name} is not supported here; supported callbacks: {supported}"])
    fields = _fields(cls)
    options: dict[str, Any] = {}
    for field in fields:
        value = getattr(callback, cls.keras_attributes.get(field, field), _MISSING)
        if value is _MISSING:
            continue
        value = _plain(value)
        if field == "min_delta" and isinstance(value, int | float):
            value = abs(value)  # Keras turns it negative once it knows the monitored value should fall
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        options[field] = value
    where = f"callback {class_name}"
    spec = _validated(cls, {"type": _tag(cls), **options}, where)
    # The job keeps its own checkpoint file: the path only has to be one Keras takes.
    rebuilt = spec.build("checkpoint.weights.h5") if isinstance(spec, CheckpointCallback) else spec.build()
    problems = []
    for parameter in inspect.signature(type(callback)).parameters.values():
        key = parameter.name
        if parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL) or key in fields:
            continue
        if key in cls.keras_unchecked:
            continue
        given, built = getattr(callback, key, _MISSING), getattr(rebuilt, key, _MISSING)
        if _plain(given) != _plain(built):
            problems.append(_unsupported(where, key, given, fields))
    if problems:
        raise UnsupportedKerasError(problems)
    return _dump(spec)


# --- the conversion of one serialised Keras object ----------------------------------------------------------------


def _from_keras(
    registry: Mapping[str, type[BaseModel]],
    serialized: Mapping[str, Any],
    where: str,
    problems: list[str],
    *,
    kind: str = "",
    unchecked: frozenset[str] | set[str] = frozenset(),
    check: bool = True,
) -> dict[str, Any] | None:
    """The spec of a serialised Keras object (``{"module", "class_name", "config", ...}``) of a class in
    ``registry``, or None with its problems added. Without ``check`` its other options are left to the object
    that holds it: a wrapper sets options of the layer it wraps (Bidirectional, ``zero_output_for_mask``)."""
    class_name = str(serialized.get("class_name"))
    config = serialized.get("config")
    cls = registry.get(class_name)
    builtin = str(serialized.get("module", "")).split(".")[0] == "keras" and serialized.get("registered_name") is None
    if cls is None or not builtin or not isinstance(config, Mapping):
        supported = ", ".join(registry)
        problems.append(f"{where}: {class_name} is not supported here; supported {kind or 'classes'}: {supported}")
        return None
    options = _options(cls, config)
    inner: dict[str, tuple[str, type[BaseModel]]] = {}
    for key, value in options.items():
        if _is_serialized(value):
            nested = _NESTED.get(str(value.get("module")))
            label = f"{where} {key} ({value.get('class_name')})"
            if nested is None:
                problems.append(_unsupported(where, key, value, _fields(cls)))
                return None
            converted = _from_keras(nested, value, label, problems, check=False)
            if converted is None:
                return None
            options[key] = converted
            inner[key] = (label, nested[str(value["class_name"])])
    try:
        spec = _validated(cls, {"type": _tag(cls), **options}, where)
    except UnsupportedKerasError as exc:
        problems.extend(exc.problems)
        return None
    if not check:
        return _dump(spec)
    rebuilt = spec.build().get_config()
    skip = set(unchecked) | set(getattr(cls, "keras_unchecked", ()))
    found = []
    said: set[tuple[str, str]] = set()
    for key, value in _differences(config, rebuilt, skip, prefix=""):
        head, _, rest = key.partition(".")
        if head in inner and rest:  # an option of the wrapped layer: said as its own
            label, nested_cls = inner[head]
            found.append(_unsupported(label, rest, value, _fields(nested_cls)))
            said.add((rest, repr(value)))
        elif rest and (rest, repr(value)) in said:
            continue  # the same option of a copy Keras makes of the wrapped layer (Bidirectional's backward_layer)
        else:
            found.append(_unsupported(where, key, value, _fields(cls)))
    problems.extend(found)
    return None if found else _dump(spec)


def _options(cls: type[BaseModel], config: Mapping[str, Any]) -> dict[str, Any]:
    read = getattr(cls, "keras_options", None)
    taken = read(config) if read is not None else {k: config[k] for k in _fields(cls) if k in config}
    return {key: _plain(value) for key, value in taken.items()}


def _validated(cls: type[BaseModel], spec: dict[str, Any], where: str) -> Any:
    try:
        return cls.model_validate(spec)
    except ValidationError as exc:
        raise UnsupportedKerasError([f"{where}: {_located(error, spec)}" for error in exc.errors()]) from exc


def _located(error: Any, spec: Mapping[str, Any] | None = None) -> str:
    """A validation error as ``option=value: message``, its path without the tags Pydantic puts in it for the
    member of a union it tried (``layer.lstm.units`` is ``layer.units``)."""
    parts = error["loc"]
    loc = tuple(
        part for i, part in enumerate(parts) if isinstance(part, int) or i == len(parts) - 1 or part not in _TAGS
    )
    if spec is not None and loc and loc[0] in spec and len(loc) == 1:
        return f"{loc[0]}={_shown(spec[loc[0]])}: {error['msg']}"
    return f"{format_path(loc)}: {error['msg']}" if loc else str(error["msg"])


def _differences(
    given: Mapping[str, Any], built: Mapping[str, Any], skip: set[str], prefix: str
) -> list[tuple[str, Any]]:
    """The options (as dotted paths) whose values in ``given`` differ from ``built``'s; nested objects of the
    same class are compared option by option."""
    found: list[tuple[str, Any]] = []
    for key in [*given, *(k for k in built if k not in given)]:
        if key in skip:
            continue
        a, b = given.get(key, _MISSING), built.get(key, _MISSING)
        if (
            _is_serialized(a)
            and _is_serialized(b)
            and a.get("class_name") == b.get("class_name")
            and isinstance(a.get("config"), Mapping)
            and isinstance(b.get("config"), Mapping)
        ):
            found += _differences(a["config"], b["config"], set(), prefix=f"{prefix}{key}.")
        elif _plain(a) != _plain(b):
            found.append((f"{prefix}{key}", a))
    return found


def _unsupported(where: str, key: str, value: Any, fields: Sequence[str]) -> str:
    options = [f for f in fields if f != "name"]
    supported = f"supported options: {', '.join(options)}" if options else "only its defaults are"
    shown = "(not given)" if value is _MISSING else _shown(value)
    return f"{where}: {key}={shown} is not supported here; {supported}"


def _named(value: Any, names: tuple[str, ...], module: str, what: str) -> str:
    """A loss or metric object by its name, if the spec knows the name and the object is at its defaults."""
    import keras

    serialized = _serialize(value)
    if not _is_serialized(serialized):
        raise UnsupportedKerasError([f"{what} {value!r} is not supported here; supported: {', '.join(names)}"])
    class_name = str(serialized["class_name"])
    config = serialized["config"]
    if class_name == "function" and isinstance(config, str):
        if config in names:
            return config
        raise UnsupportedKerasError([f"{what} {config} is not supported here; supported: {', '.join(names)}"])
    name = _snake(class_name)
    if name not in names or not str(serialized.get("module", "")).startswith(module):
        raise UnsupportedKerasError([f"{what} {class_name} is not supported here; supported: {', '.join(names)}"])
    default = getattr(getattr(keras, module.split(".")[1]), class_name)().get_config()
    found = [
        _unsupported(f"{what} {class_name}", key, given, [])
        for key, given in _differences(config, default, {"name"}, prefix="")
    ]
    if found:
        raise UnsupportedKerasError(found)
    return name


# --- a functional model as a stack --------------------------------------------------------------------------------


def _plain_stack(config: Mapping[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    """A functional model's layers from its input to its output, if each feeds the next and nothing else; the
    problems otherwise. The masks Keras computes on the way (for ``mask_zero``) flow as in a Sequential model."""
    entries: list[dict[str, Any]] = list(config["layers"])
    by_name = {entry.get("name"): entry for entry in entries}
    inputs, outputs = _references(config.get("input_layers")), _references(config.get("output_layers"))
    model = repr(str(config.get("name")))
    if len(inputs) != 1 or len(outputs) != 1:
        problems.append(
            f"model {model} has {len(inputs)} inputs and {len(outputs)} outputs: only a plain stack of layers (one "
            "input, each layer feeding the next, one output) can be trained here"
        )
        return []
    chain: list[dict[str, Any]] = []
    masks: set[str] = set()
    name = outputs[0]
    while name in by_name and name not in (entry.get("name") for entry in chain):
        entry = by_name[name]
        chain.append(entry)
        nodes = entry.get("inbound_nodes") or []
        if name == inputs[0]:
            break
        label = _layer_label(entry)
        if len(nodes) != 1:
            problems.append(f"{label} is called {len(nodes)} times: in a plain stack each layer is called once")
            return []
        args, kwargs = nodes[0].get("args") or [], nodes[0].get("kwargs") or {}
        if len(args) != 1 or not _is_tensor(args[0]):
            count = sum(1 for arg in args if _is_tensor(arg)) + sum(
                1 for arg in args if isinstance(arg, list) for item in arg if _is_tensor(item)
            )
            problems.append(
                f"{label} takes {count} inputs: only a plain stack of layers (each feeding the next) can be "
                "trained here; the model has branches"
            )
            return []
        for key, value in kwargs.items():
            if key == "mask" and _is_tensor(value):
                masks.add(value["config"]["keras_history"][0])
            elif not (key == "training" and "mask" in kwargs and value in (None, False)):
                problems.append(f"{label} is called with {key}={_shown(value)}, which a keras.Sequential cannot say")
        name = args[0]["config"]["keras_history"][0]
    chain.reverse()
    if not chain or chain[0].get("name") != inputs[0]:
        problems.append(f"model {model}: its output does not come from its input through one layer after another")
        return []
    on_chain = {entry.get("name") for entry in chain}
    for entry in entries:
        if entry.get("name") not in on_chain and entry.get("name") not in masks:
            problems.append(
                f"{_layer_label(entry)} is not on the way from the input to the output: only a plain stack of layers "
                "can be trained here; the model has branches"
            )
    return chain


def _references(value: Any) -> list[str]:
    """``["dense", 0, 0]`` or ``[["a", 0, 0], ["b", 0, 0]]`` as the layers' names."""
    if not isinstance(value, list) or not value:
        return []
    if isinstance(value[0], str):
        return [value[0]]
    return [str(item[0]) for item in value if isinstance(item, list) and item]


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("class_name") == "__keras_tensor__"


# --- small things -------------------------------------------------------------------------------------------------


def _fields(cls: type[BaseModel]) -> list[str]:
    return [name for name in cls.model_fields if name != "type"]


def _dump(spec: BaseModel) -> dict[str, Any]:
    """A spec as the request carries it: its type, then what differs from its defaults."""
    return {"type": getattr(spec, "type"), **spec.model_dump(mode="json", exclude_defaults=True)}  # noqa: B009


def _check_dtype(config: Mapping[str, Any], name: str, problems: list[str]) -> None:
    import keras

    default = keras.Sequential().get_config().get("dtype")
    if "dtype" in config and _plain(config["dtype"]) != _plain(default):
        problems.append(f"model {name!r}: dtype={_shown(config['dtype'])} is not supported here: it trains in float32")


def _layer_label(entry: Mapping[str, Any]) -> str:
    config = entry.get("config")
    name = config.get("name") if isinstance(config, Mapping) else entry.get("name")
    return f"layer {str(name)!r} ({entry.get('class_name')})"


def _serialize(value: Any) -> Any:
    if isinstance(value, Mapping | str):
        return value
    import keras

    return keras.saving.serialize_keras_object(value)


def _is_serialized(value: Any) -> bool:
    return isinstance(value, Mapping) and "class_name" in value and "config" in value


def _snake(class_name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", class_name).lower()


def _plain(value: Any) -> Any:
    """A config value as JSON has it: lists for tuples, Python numbers for NumPy's, and a float that is exactly a
    float32 (a learning rate read back from its variable, 0.0010000000474974513) as the float32 reads
    (0.001)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        single = np.float32(value)
        if float(single) == value:
            return float(str(single))
    return value


def _shown(value: Any) -> str:
    """A config value as a person reads it: an object as ``HeNormal(seed=None)``, a string in quotes."""
    if _is_serialized(value):
        config = value["config"]
        if isinstance(config, Mapping):
            args = ", ".join(
                f"{key}={_shown(item)}" for key, item in config.items() if key != "name" and item is not None
            )
            return f"{value['class_name']}({args})"
        return str(config)
    if isinstance(value, Mapping) and value.get("class_name") == "__keras_tensor__":
        return "<a tensor>"
    return repr(_plain(value))
