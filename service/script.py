"""A training request as the plain Keras script a learner would write: the same data, splits, model, compile and fit
options, in the same order, so that running it gives the job's numbers.

Layers, optimizers, schedules and metrics are rendered from the Keras objects the request builds: each one's
``get_config()`` against a default instance of its class, keeping only what differs, and checked by building the
rendered call again and comparing configs. A layer type added to the spec renders without anything added here.
Keras is imported inside the functions, as ``service.spec`` does.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from service.datasets.builtin import BUILTIN_DATASETS, SEQUENCE_DATASETS
from service.spec import CallbackSpec, CheckpointCallback, LayerSpec, TrainRequest

# What the script's files are called, in the directory it runs in.
CHECKPOINT_FILE = "best-model.weights.h5"
DATASET_FILE = "dataset.npz"
# The batch size the worker evaluates the test split with; the loss sums in the same order only with the same one.
EVALUATE_BATCH_SIZE = 256
# Keras' own default for fit(batch_size=None).
KERAS_BATCH_SIZE = 32
# A call longer than this is written one argument a line.
LINE_LENGTH = 100
# Where Keras' public classes live, searched in this order for a class's public name.
PUBLIC_NAMESPACES = (
    "layers",
    "optimizers",
    "optimizers.schedules",
    "metrics",
    "callbacks",
    "initializers",
    "regularizers",
    "constraints",
    "losses",
)
SKLEARN_LOADERS = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
}
# keras.datasets whose labels come as an (n, 1) column, which the worker makes one class number a row.
COLUMN_LABELS = frozenset({"cifar10"})


class RenderError(Exception):
    """A Keras object this module cannot write as a call that builds the same object."""


# --- expressions: text for the script, and the object it builds, to check the text against ----------------------


class Expr:
    def text(self, indent: int = 0, used: int = 0) -> str:
        """The source, its continuation lines indented by ``indent``; ``used`` characters precede it on its line."""
        raise NotImplementedError

    def create(self) -> Any:
        raise NotImplementedError


@dataclass
class Lit(Expr):
    value: Any
    source: str

    def text(self, indent: int = 0, used: int = 0) -> str:
        return self.source

    def create(self) -> Any:
        return self.value


@dataclass
class Items(Expr):
    items: list[Expr]
    kind: type[tuple[Any, ...]] | type[list[Any]]

    def text(self, indent: int = 0, used: int = 0) -> str:
        inner = ", ".join(item.text(indent) for item in self.items)
        if self.kind is tuple:
            return f"({inner},)" if len(self.items) == 1 else f"({inner})"
        return f"[{inner}]"

    def create(self) -> Any:
        return self.kind(item.create() for item in self.items)


@dataclass
class Dict(Expr):
    items: dict[str, Expr]

    def text(self, indent: int = 0, used: int = 0) -> str:
        return "{" + ", ".join(f"{_string(k)}: {v.text(indent)}" for k, v in self.items.items()) + "}"

    def create(self) -> Any:
        return {k: v.create() for k, v in self.items.items()}


@dataclass
class Call(Expr):
    path: str
    target: Any
    args: list[Expr] = field(default_factory=list)
    kwargs: dict[str, Expr] = field(default_factory=dict)

    def arguments(self, indent: int) -> list[str]:
        return [a.text(indent) for a in self.args] + [
            f"{k}={v.text(indent, len(k) + 1)}" for k, v in self.kwargs.items()
        ]

    def text(self, indent: int = 0, used: int = 0) -> str:
        return call_text(self.path, self.arguments(indent + 4), indent, used)

    def create(self) -> Any:
        return self.target(*(a.create() for a in self.args), **{k: v.create() for k, v in self.kwargs.items()})


def call_text(head: str, arguments: list[str], indent: int = 0, used: int = 0) -> str:
    """``head(a, b)`` on one line when it fits, else its arguments on the next line, else one a line (as ruff
    formats a call)."""
    one_line = f"{head}({', '.join(arguments)})"
    if "\n" not in one_line and indent + used + len(one_line) <= LINE_LENGTH:
        return one_line
    hugged = ", ".join(arguments)
    if "\n" not in hugged and indent + 4 + len(hugged) <= LINE_LENGTH:
        return f"{head}(\n{' ' * (indent + 4)}{hugged}\n{' ' * indent})"
    body = "".join(f"{' ' * (indent + 4)}{argument},\n" for argument in arguments)
    return f"{head}(\n{body}{' ' * indent})"


def _string(text: str) -> str:
    # JSON's escapes are Python's; non-ASCII names stay readable.
    return json.dumps(text, ensure_ascii=False)


def _float(value: float, compact: bool) -> Lit:
    if not math.isfinite(value):
        return Lit(value, f'float("{value}")')
    source = repr(value)
    if compact:
        import numpy as np

        # A float32 setting read back as a double (0.009999999776482582) is written as it was given (0.01).
        single = np.float32(value)
        if float(single) == value and len(str(single)) < len(source):
            return Lit(float(str(single)), str(single))
    return Lit(value, source)


def _literal(value: Any, compact: bool) -> Expr:
    if value is None or isinstance(value, bool):
        return Lit(value, repr(value))
    if isinstance(value, int):
        return Lit(value, repr(value))
    if isinstance(value, float):
        return _float(value, compact)
    if isinstance(value, str):
        return Lit(value, _string(value))
    raise RenderError(f"cannot write {value!r} ({type(value).__name__}) in a script")


# --- Keras objects ------------------------------------------------------------------------------------------------


def public_path(cls: type) -> str:
    """``keras.layers.Dense`` for Dense: where Keras exports the class, never its private module."""
    import keras

    for path in PUBLIC_NAMESPACES:
        namespace: Any = keras
        for part in path.split("."):
            namespace = getattr(namespace, part)
        if getattr(namespace, cls.__name__, None) is cls:
            return f"keras.{path}.{cls.__name__}"
    raise RenderError(f"{cls.__name__} is not a public Keras class")


def _serialized(value: Any) -> bool:
    return isinstance(value, dict) and {"module", "class_name", "config"} <= value.keys()


def _serialized_class(value: dict[str, Any]) -> type:
    module, name = value["module"], value["class_name"]
    if value.get("registered_name") not in (None, name) or not module.startswith("keras"):
        raise RenderError(f"{name} from {module} is not a built-in Keras class")
    cls = getattr(importlib.import_module(module), name, None)
    if not isinstance(cls, type):
        raise RenderError(f"{module} has no class {name}")
    return cls


def _is_layer_config(value: Any) -> bool:
    return _serialized(value) and str(value["module"]).startswith("keras.layers")


def comparable(config: Any) -> Any:
    """A config without the names of the layers in it: Keras numbers the ones it names (dense, dense_1), and the
    names that matter are given explicitly."""
    if isinstance(config, dict):
        nested = {k: comparable(v) for k, v in config.items()}
        if _is_layer_config(config):
            nested["config"] = {k: v for k, v in nested["config"].items() if k != "name"}
        return nested
    if isinstance(config, list | tuple):
        return type(config)(comparable(v) for v in config)
    return config


def required_parameters(cls: type) -> list[str]:
    parameters = inspect.signature(cls).parameters.values()
    return [
        p.name
        for p in parameters
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


_MISSING = object()


class _Renderer:
    """Renders one Keras object's construction. ``nested`` are the request's layers inside it (a wrapper's), written
    from their own spec so that their names are the request's."""

    def __init__(self, nested: list[LayerSpec]) -> None:
        self.nested = nested
        self.used: set[int] = set()

    def value(self, value: Any, compact: bool) -> Expr:
        if _serialized(value):
            if _is_layer_config(value):
                for index, spec in enumerate(self.nested):
                    if index not in self.used and type(spec.build()).__name__ == value["class_name"]:
                        self.used.add(index)
                        return layer_call(spec)
            return _Renderer([]).config_call(_serialized_class(value), value["config"], name=None, keep_name=False)
        if isinstance(value, dict):
            return Dict({str(k): self.value(v, compact) for k, v in value.items()})
        if isinstance(value, list | tuple):
            if compact and isinstance(value, tuple) and value and len(set(value)) == 1 and type(value[0]) is int:
                return _literal(value[0], compact)  # kernel_size=3 for (3, 3)
            return Items([self.value(v, compact) for v in value], tuple if isinstance(value, tuple) else list)
        return _literal(value, compact)

    def config_call(
        self,
        cls: type,
        config: dict[str, Any],
        *,
        name: str | None,
        keep_name: bool,
        unlisted: dict[str, Any] | None = None,
    ) -> Call:
        """The call of ``cls`` that builds an object with this config: its required arguments (the first one
        positional) and the options that differ from a default instance's, each written as short as builds the
        same config. Named ``name`` if given; otherwise the name is compared only with ``keep_name``."""
        required = required_parameters(cls)
        missing = [p for p in required if p not in config]
        if missing:
            raise RenderError(f"{cls.__name__}'s config lacks its required {', '.join(missing)}")
        ignored = set() if keep_name and name is None else {"name"}
        reference: dict[str, Any] | None = None
        # Options written out though a default instance has them (a default that follows another option, as
        # pooling strides follow the pool size), and options written in full rather than short.
        forced: set[str] = set()
        exact: set[str] = set()
        differ: set[str] = set()
        for _ in range(2 * len(config) + 2):
            self.used = set()
            args = {p: self.value(config[p], p not in exact) for p in required}
            if reference is None:
                reference = cls(**{p: e.create() for p, e in args.items()}).get_config()
            kwargs: dict[str, Expr] = {}
            for key, value in config.items():
                if key in args or key in ignored:
                    continue
                if key in forced or comparable(value) != comparable(reference.get(key, _MISSING)):
                    kwargs[key] = self.value(value, key not in exact)
            kwargs |= {key: self.value(value, compact=False) for key, value in (unlisted or {}).items()}
            if name is not None:
                kwargs["name"] = Lit(name, _string(name))
            call = Call(public_path(cls), cls, [args[p] for p in required[:1]], {p: args[p] for p in required[1:]})
            call.kwargs.update(kwargs)
            built = call.create().get_config()
            differ = {
                key
                for key in config.keys() | built.keys()
                if key not in ignored and comparable(config.get(key, _MISSING)) != comparable(built.get(key, _MISSING))
            }
            if not differ:
                return call
            written = set(args) | set(kwargs)
            progress = (differ - written - forced) | (differ & written - exact)
            if not progress:
                break
            forced |= differ - written
            exact |= differ & written
        raise RenderError(f"{cls.__name__}: no call builds its config ({', '.join(sorted(differ))} differ)")


def layer_call(spec: LayerSpec, name: str | None = None) -> Expr:
    """``keras.layers.Dense(100, activation="relu", name="hidden")`` for a dense layer spec: named ``name``, else as
    the spec names it, else left to Keras."""
    layer = spec.build()
    config = layer.get_config()
    parameters = inspect.signature(type(layer)).parameters
    nested: list[LayerSpec] = []
    # Options the spec gives its constructor that the config leaves out (SimpleRNN's seed): written as given.
    unlisted: dict[str, Any] = {}
    for field_name in type(spec).model_fields:
        value = getattr(spec, field_name)
        nested += [item for item in (value if isinstance(value, list) else [value]) if isinstance(item, LayerSpec)]
        parameter = parameters.get(field_name)
        if (
            field_name != "name"
            and field_name not in config
            and parameter is not None
            and value != parameter.default
            and not isinstance(value, LayerSpec)
        ):
            unlisted[field_name] = value
    return _Renderer(nested).config_call(
        type(layer), config, name=name if name is not None else spec.name, keep_name=False, unlisted=unlisted
    )


def object_call(obj: Any, *, named: bool = False) -> Call:
    """An optimizer's, schedule's or metric's construction. ``named`` writes its name, as a metric needs: its logs
    are keyed by it, and Keras numbers the names it gives (auc, auc_1). An optimizer's name changes no number."""
    name = str(obj.name) if named else None
    return _Renderer([]).config_call(type(obj), obj.get_config(), name=name, keep_name=False)


def callback_call(spec: CallbackSpec, path: str | None = None) -> Call:
    """A callback's construction. Callbacks have no config: the arguments are the spec's fields and what the built
    callback keeps under its constructor's parameter names, and the call is checked by comparing the state of the
    callback it builds with the built one's."""
    factory: Any = spec  # each callback type has its build(); a checkpoint's takes the file it writes
    built = factory.build(path) if isinstance(spec, CheckpointCallback) and path is not None else factory.build()
    cls = type(built)
    given = spec.model_dump(exclude={"type"})
    positional: list[Expr] = []
    kwargs: dict[str, Expr] = {}
    renderer = _Renderer([])
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.name in given:
            value = given[parameter.name]
        elif hasattr(built, parameter.name):
            value = getattr(built, parameter.name)
        elif parameter.default is inspect.Parameter.empty:
            raise RenderError(f"{cls.__name__}: cannot tell its {parameter.name}")
        else:
            continue
        if parameter.default is inspect.Parameter.empty:
            positional.append(renderer.value(value, compact=False))
        elif value != parameter.default:
            kwargs[parameter.name] = renderer.value(value, compact=False)
    call = Call(public_path(cls), cls, positional, kwargs)
    if _state(call.create()) != _state(built):
        raise RenderError(f"{cls.__name__}: the rendered call builds a different callback")
    return call


def _state(callback: Any) -> dict[str, Any]:
    simple = (type(None), bool, int, float, str, tuple, list)
    return {k: v for k, v in vars(callback).items() if isinstance(v, simple)}


# --- the script ---------------------------------------------------------------------------------------------------


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")

    def text(self) -> str:
        while self.lines and self.lines[-1] == "":
            self.lines.pop()
        return "\n".join(self.lines) + "\n"


def _split(held: str, size: float, random_state: int | None, stratify: bool) -> str:
    options = ["train_input", "train_target", f"test_size={size!r}"]
    if random_state is not None:
        options.append(f"random_state={random_state}")
    if stratify:
        options.append("stratify=train_target")
    return call_text(f"train_input, {held}_input, train_target, {held}_target = train_test_split", options)


def rescale_expression(variable: str, rescale: float | None) -> str:
    """The float32 array the worker makes of a split: its numbers as float32, times ``np.float32(rescale)``.
    Dividing by a power of two is that multiplication exactly; by any other number it rounds differently."""
    as_float = f'{variable}.astype("float32")'
    if rescale is None:
        return as_float
    inverse = round(1 / rescale)
    if inverse > 1 and 1 / inverse == rescale:
        if math.frexp(rescale)[0] == 0.5:
            return f"{as_float} / {float(inverse)!r}"
        if len(f"1 / {inverse}") < len(repr(rescale)):
            return f"{as_float} * np.float32(1 / {inverse})"  # as given: 1 / 255 rather than 0.00392156862745098
    return f"{as_float} * np.float32({rescale!r})"


def file_name(text: str) -> str:
    """A file name for ``text`` in any shell and file system: ASCII letters, digits, '.', '-' and '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.") or "model"


def _docstring_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render(
    request: TrainRequest,
    *,
    execution: Mapping[str, Any] | None,
    dataset_url: str | None,
    job_id: str | None = None,
    test_split: bool | None = None,
) -> str:
    """The script of ``request``. ``execution`` is the job's record of how its training ran (its steps per
    execution), None before a worker has started it; ``dataset_url`` the service's base URL, where an uploaded
    dataset is downloaded from; ``test_split`` whether an uploaded dataset has its own test split."""
    import keras
    import numpy as np
    import sklearn
    import tensorflow as tf

    from service.keras_build import build_model, runnable_name

    spec, fit, compiled = request.dataset, request.fit, request.compile
    validation = fit.validation_data
    held_out = validation is not None and validation != "test"
    checkpoint = next((c for c in fit.callbacks if isinstance(c, CheckpointCallback)), None)
    guarded = checkpoint is not None and checkpoint.initial_value_threshold is not None
    out = _Lines()

    title = _docstring_text(request.name or request.model.name or "A training request")
    what = f"job {job_id}" if job_id else "the training request"
    out.add(
        f'"""{title}: {what} as a plain Keras script.',
        "",
        f"It gives the job's numbers with the service's versions: Keras {keras.__version__}, TensorFlow "
        f"{tf.__version__},",
        f"scikit-learn {sklearn.__version__} and NumPy {np.__version__}.",
    )
    if spec.id is not None:
        out.add(
            "",
            f"It trains on the uploaded dataset {spec.id} as the service stores it,",
            f"in {DATASET_FILE} beside it:",
            "",
            f"    curl -o {DATASET_FILE} {dataset_url or 'http://<the service>'}/datasets/{spec.id}/download",
        )
    out.add('"""', "", "import json")
    if guarded:
        out.add("import os")
    out.add("", "import keras", "import numpy as np")
    if fit.seed is not None:
        out.add("import tensorflow as tf")
    if spec.name in SKLEARN_LOADERS:
        out.add(f"from sklearn.datasets import {SKLEARN_LOADERS[spec.name]}")
    if spec.test_size is not None or held_out:
        out.add("from sklearn.model_selection import train_test_split")
    out.blank()

    if fit.seed is not None:
        out.add(
            "# The same seed gives the same numbers, run after run.",
            f"keras.utils.set_random_seed({fit.seed})",
            "tf.config.experimental.enable_op_determinism()",
            "",
        )

    # The data, its splits and labels, in the order the job prepares them.
    has_test = _load(out, request, test_split)
    if spec.test_size is not None:
        instead = " (instead of the dataset's own)" if has_test else ""
        out.add(f"# A test split{instead}, evaluated after training.")
        out.add(_split("test", spec.test_size, spec.random_state, spec.stratify))
        has_test = True
    if validation is not None and validation != "test":
        out.add("# Validation rows held out of the training rows.")
        out.add(_split("val", validation.size, validation.random_state, validation.stratify))
    out.blank()
    parts = ["train", *(["val"] if held_out else []), *(["test"] if has_test else [])]
    if spec.reshape is not None:
        out.add("# Each sample in the shape the model takes, as the book reshapes its images.")
        shape = ", ".join(str(d) for d in spec.reshape)
        for part in parts:
            out.add(f"{part}_input = {part}_input.reshape(-1, {shape})")
    if spec.one_hot:
        out.add("# Each word index as a one-hot vector.")
        words = request.model.input_shape[-1]
        for part in parts:
            out.add(f"{part}_input = keras.utils.to_categorical({part}_input, {words})")
    for part in parts:
        out.add(f"{part}_scaled = {rescale_expression(f'{part}_input', spec.rescale)}")
    model = build_model(request.model)
    encoding = compiled.label_encoding
    if encoding != "sparse":
        classes = int(model.outputs[0].shape[-1])
        for part in parts:
            if encoding == "binary":
                out.add(f'{part}_target = {part}_target.astype("float32").reshape(-1, 1)')
            else:
                out.add(f"{part}_target = keras.utils.to_categorical({part}_target, {classes})")
    out.blank()

    model_name = request.model.name
    header = "model = keras.Sequential()"
    if model_name is not None:
        header = f"model = keras.Sequential(name={_string(runnable_name(model_name))})"
        if runnable_name(model_name) != model_name:
            header += f"  # {model_name}"
    out.add(header, f"model.add(keras.Input(shape={tuple(request.model.input_shape)!r}))")
    for layer_spec in request.model.layers:
        name = None if layer_spec.name is None else runnable_name(layer_spec.name)
        layer = layer_call(layer_spec, name).text(4)
        line = f"model.add({layer})" if "\n" not in layer else f"model.add(\n    {layer}\n)"
        if layer_spec.name is not None and name != layer_spec.name:
            line += f"  # {layer_spec.name}"
        out.add(line)
    out.add("model.summary()", "")

    optimizer = compiled.optimizer.build()
    options = [
        f"optimizer={_optimizer(optimizer, compiled.optimizer.type)}",
        f"loss={_string(compiled.loss)}",
    ]
    if compiled.metrics:
        metrics = [m if isinstance(m, str) else object_call(m, named=True) for m in compiled.build_metrics()]
        texts = [_string(m) if isinstance(m, str) else m.text(8) for m in metrics]
        options.append(f"metrics=[{', '.join(texts)}]")
    steps = None if execution is None else execution.get("steps_per_execution")
    if steps is None and fit.steps_per_execution != "auto":
        steps = fit.steps_per_execution
    if steps is not None and steps != 1:
        options.append(f"steps_per_execution={steps}")
    jit = None if execution is None else execution.get("jit_compile")
    if jit is None and fit.jit_compile != "auto":
        jit = fit.jit_compile
    if jit:
        options.append("jit_compile=True")
    if steps is None:
        out.add("# The job decides steps_per_execution when it starts: its page says how many.")
    out.add(call_text("model.compile", options), "")

    variables: list[str] = []
    for callback in fit.callbacks:
        variable = f"{callback.type}_cb"
        taken = sum(v.startswith(f"{callback.type}_") for v in variables)
        if taken:
            variable = f"{callback.type}_{taken + 1}_cb"
        variables.append(variable)
        path = CHECKPOINT_FILE if isinstance(callback, CheckpointCallback) else None
        out.add(f"{variable} = {callback_call(callback, path).text(0, len(variable) + 3)}")
    out.blank()

    fit_options = ["train_scaled", "train_target", f"epochs={fit.epochs}"]
    if fit.batch_size != KERAS_BATCH_SIZE:
        fit_options.append(f"batch_size={fit.batch_size}")
    if fit.validation_split:
        fit_options.append(f"validation_split={fit.validation_split!r}")
    if validation is not None:
        held = "test" if validation == "test" else "val"
        fit_options.append(f"validation_data=({held}_scaled, {held}_target)")
    if not fit.shuffle:
        fit_options.append("shuffle=False")
    if variables:
        fit_options.append(f"callbacks=[{', '.join(variables)}]")
    out.add(call_text("history = model.fit", fit_options))
    if checkpoint is not None:
        load = f'model.load_weights("{CHECKPOINT_FILE}")'
        out.add("# On with the best epoch's weights, which the checkpoint kept.")
        if guarded:
            out.add(f'if os.path.exists("{CHECKPOINT_FILE}"):  # an epoch beat initial_value_threshold', f"    {load}")
        else:
            out.add(load)
    out.blank()

    evaluation = "None"
    if has_test:
        evaluation = "evaluation"
        options = ["test_scaled", "test_target", f"batch_size={EVALUATE_BATCH_SIZE}", "return_dict=True"]
        out.add(call_text("evaluation = model.evaluate", options))
    out.add(f'print(json.dumps({{"history": history.history, "evaluation": {evaluation}}}))')
    out.add(f'model.save("{file_name(request.name or model_name or "model")}.keras")')
    return out.text()


def _optimizer(optimizer: Any, type_name: str) -> str:
    """``"adam"`` for Keras' default Adam, as compile() takes it; else the optimizer's construction."""
    import keras

    call = object_call(optimizer)
    if not call.args and not call.kwargs and type(keras.optimizers.get(type_name)) is type(optimizer):
        return _string(type_name)
    return call.text(4, len("optimizer="))


def _load(out: _Lines, request: TrainRequest, test_split: bool | None) -> bool:
    """Loads the dataset into train_input/train_target (and test_input/test_target); whether it has its own test
    split."""
    name = request.dataset.name
    if name in SKLEARN_LOADERS:
        out.add(f"{name} = {SKLEARN_LOADERS[name]}()")
        out.add(f"train_input, train_target = {name}.{'images' if name == 'digits' else 'data'}, {name}.target")
        return False
    if name is not None:
        dataset = request.dataset
        options = "" if dataset.num_words is None else f"num_words={dataset.num_words}"
        out.add(f"(train_input, train_target), (test_input, test_target) = keras.datasets.{name}.load_data({options})")
        if name in SEQUENCE_DATASETS and dataset.maxlen is not None:
            cut = [f"maxlen={dataset.maxlen}"]
            cut += [
                f"{side}={_string(getattr(dataset, side))}"
                for side in ("padding", "truncating")
                if getattr(dataset, side) != "pre"
            ]
            out.add(f"# Every review cut or padded to {dataset.maxlen} words.")
            for part in ("train", "test"):
                out.add(f"{part}_input = keras.utils.pad_sequences({part}_input, {', '.join(cut)})")
        if name in COLUMN_LABELS:
            out.add(
                "# Its labels come as a column: one class number a row instead.",
                "train_target, test_target = train_target.reshape(-1), test_target.reshape(-1)",
            )
        return BUILTIN_DATASETS[name].test_rows > 0
    out.add(f'data = np.load("{DATASET_FILE}")', 'train_input, train_target = data["x_train"], data["y_train"]')
    if test_split:
        out.add('test_input, test_target = data["x_test"], data["y_test"]')
    return bool(test_split)
