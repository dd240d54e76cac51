"""The training request: a Sequential model, its compile options, a dataset and fit options.

This module is the one mapping from the JSON spec to Keras objects. Each layer and optimizer is one class here:
its fields are validated by Pydantic, and its ``build()`` calls one allow-listed Keras constructor. User JSON never
reaches Keras' ``from_config``/``deserialize``. Keras is imported inside ``build()`` only, so importing this module
(the Celery parent process does) never loads TensorFlow.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.datasets.builtin import BUILTIN_DATASETS

# Keras 3's activation functions (keras.activations) that a layer can name; with UNUSABLE_ACTIVATIONS they are
# exactly Keras' own, which the tests check against Keras itself.
ACTIVATIONS: tuple[str, ...] = (
    "celu",
    "elu",
    "exponential",
    "gelu",
    "hard_shrink",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "leaky_relu",
    "linear",
    "log_sigmoid",
    "log_softmax",
    "mish",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_shrink",
    "softmax",
    "softplus",
    "softsign",
    "sparse_plus",
    "sparse_sigmoid",
    "sparsemax",
    "squareplus",
    "swish",
    "tanh",
    "tanh_shrink",
)
# The other two, and why a layer cannot use them.
UNUSABLE_ACTIVATIONS: dict[str, str] = {
    "glu": "it halves the last dimension of its input, which the layer does not declare in its output shape: the "
    "next layer would be built for twice the units it receives",
    "threshold": "it takes a threshold and a default value that a layer never passes",
}

# More steps per call into TensorFlow than this save nothing measurable and delay a cancel.
MAX_STEPS_PER_EXECUTION = 10_000
# Losses for classification targets, with how the labels are fed to each.
SPARSE_LOSSES = ("sparse_categorical_crossentropy",)
BINARY_LOSSES = ("binary_crossentropy", "binary_focal_crossentropy")
ONE_HOT_LOSSES = (
    "categorical_crossentropy",
    "categorical_focal_crossentropy",
    "categorical_hinge",
    "kl_divergence",
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
)
LOSSES: tuple[str, ...] = SPARSE_LOSSES + BINARY_LOSSES + ONE_HOT_LOSSES

METRICS: tuple[str, ...] = (
    "accuracy",
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
    "sparse_top_k_categorical_accuracy",
    "top_k_categorical_accuracy",
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    "binary_crossentropy",
    "mean_squared_error",
    "mean_absolute_error",
    "auc",
    "precision",
    "recall",
)
# Metrics Keras knows by a class rather than a lower-case name.
_METRIC_CLASSES = {"auc": "AUC", "precision": "Precision", "recall": "Recall"}


def unknown_name_error(kind: str, value: str, known: tuple[str, ...] | list[str]) -> PydanticCustomError:
    """``unknown activation 'sigmod'; did you mean 'sigmoid'?`` — or the list of choices when nothing is close."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    if close:
        message = f"unknown {kind} {value!r}; did you mean {close[0]!r}?"
    else:
        message = f"unknown {kind} {value!r}; expected one of: {', '.join(known)}"
    return PydanticCustomError(f"unknown_{kind.replace(' ', '_')}", "{message}", {"message": message})


def _one_of(kind: str, known: tuple[str, ...]) -> AfterValidator:
    """Refuses a string not in ``known`` with a suggestion (``did you mean``) rather than Pydantic's list of every
    literal; ``_enum`` declares the same choices in the schema."""

    def check(value: str) -> str:
        if value not in known:
            raise unknown_name_error(kind, value, known)
        return value

    return AfterValidator(check)


def _enum(known: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(known)})


def _plain_text(value: str) -> str:
    """Names are shown in terminals and tables and stored in every database: no NUL or other control characters."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise PydanticCustomError("invalid_name", "names may not hold control characters (such as NUL or newlines)")
    return value


def _keras_name(value: str) -> str:
    if "/" in value:
        raise PydanticCustomError("invalid_name", "names may be any text except '/', which Keras reserves")
    return _plain_text(value)


def _usable_activation(value: str) -> str:
    if value in UNUSABLE_ACTIVATIONS:
        message = f"activation {value!r} cannot be used in a layer: {UNUSABLE_ACTIVATIONS[value]}"
        raise PydanticCustomError("unusable_activation", "{message}", {"message": message})
    return value


Activation = Annotated[
    str,
    AfterValidator(_usable_activation),
    _one_of("activation", ACTIVATIONS),
    _enum(ACTIVATIONS),
    Field(description="A Keras activation name such as 'relu', 'sigmoid' or 'softmax'.", examples=["relu"]),
]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(_keras_name),
    Field(description="Any Unicode text except '/' and control characters.", examples=["hidden"]),
]
JobName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(_plain_text),
    Field(description="Any Unicode text but control characters.", examples=["digits relu + adam"]),
]
PositiveInt = Annotated[int, Field(ge=1)]
Pair = PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]


def _pair(value: int | list[int]) -> int | tuple[int, int]:
    return value if isinstance(value, int) else (value[0], value[1])


class Strict(BaseModel):
    """Every part of a request: unknown fields are refused, and values must have the type the schema says (no 0
    for false, no "5" for 5), so that the OpenAPI document is exactly what the service accepts."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- layers -----------------------------------------------------------------------------------------------------


class LayerSpec(Strict):
    name: Name | None = Field(default=None, description="Layer name; Keras picks one (dense, dense_1, …) if omitted.")

    def build(self) -> Any:
        raise NotImplementedError

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        """Parameters this layer adds on an input of this shape (checked against Keras' own count in tests),
        so a model's size is known before any weight is allocated."""
        return 0


class FlattenLayer(LayerSpec):
    """Flattens every dimension but the batch one (keras.layers.Flatten)."""

    type: Literal["flatten"]

    def build(self) -> Any:
        from keras import layers

        return layers.Flatten(name=self.name)


class DenseLayer(LayerSpec):
    """A fully connected layer (keras.layers.Dense)."""

    type: Literal["dense"]
    units: int = Field(ge=1, le=1_000_000, description="Number of neurons.")
    activation: Activation = "linear"
    use_bias: bool = True

    def build(self) -> Any:
        from keras import layers

        return layers.Dense(self.units, activation=self.activation, use_bias=self.use_bias, name=self.name)

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        return self.units * ((input_shape[-1] or 0) + int(self.use_bias))


class DropoutLayer(LayerSpec):
    """Randomly zeroes a fraction of the inputs while training (keras.layers.Dropout)."""

    type: Literal["dropout"]
    rate: float = Field(ge=0.0, lt=1.0, description="Fraction of the inputs to drop.")
    seed: int | None = None

    def build(self) -> Any:
        from keras import layers

        return layers.Dropout(self.rate, seed=self.seed, name=self.name)


class ReshapeLayer(LayerSpec):
    """Reshapes each sample (keras.layers.Reshape); one dimension may be -1."""

    type: Literal["reshape"]
    target_shape: list[Annotated[int, Field(ge=-1)]] = Field(min_length=1, max_length=4)

    def build(self) -> Any:
        from keras import layers

        return layers.Reshape(tuple(self.target_shape), name=self.name)


class Conv2DLayer(LayerSpec):
    """A 2-D convolution over (height, width, channels) inputs (keras.layers.Conv2D)."""

    type: Literal["conv2d"]
    filters: int = Field(ge=1, le=65_536)
    kernel_size: Pair = 3
    strides: Pair = 1
    padding: Literal["valid", "same"] = "valid"
    activation: Activation = "linear"
    use_bias: bool = True

    def build(self) -> Any:
        from keras import layers

        return layers.Conv2D(
            self.filters,
            _pair(self.kernel_size),
            strides=_pair(self.strides),
            padding=self.padding,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
        )

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        kernel = _pair(self.kernel_size)
        height, width = (kernel, kernel) if isinstance(kernel, int) else kernel
        return self.filters * (height * width * (input_shape[-1] or 0) + int(self.use_bias))


class MaxPooling2DLayer(LayerSpec):
    """Max pooling over (height, width, channels) inputs (keras.layers.MaxPooling2D)."""

    type: Literal["max_pooling2d"]
    pool_size: Pair = 2
    strides: Pair | None = None
    padding: Literal["valid", "same"] = "valid"

    def build(self) -> Any:
        from keras import layers

        strides = None if self.strides is None else _pair(self.strides)
        return layers.MaxPooling2D(_pair(self.pool_size), strides=strides, padding=self.padding, name=self.name)


class BatchNormalizationLayer(LayerSpec):
    """Normalises activations with running batch statistics (keras.layers.BatchNormalization)."""

    type: Literal["batch_normalization"]
    momentum: float = Field(default=0.99, gt=0.0, lt=1.0)
    epsilon: float = Field(default=0.001, gt=0.0)
    center: bool = True
    scale: bool = True

    def build(self) -> Any:
        from keras import layers

        return layers.BatchNormalization(
            momentum=self.momentum, epsilon=self.epsilon, center=self.center, scale=self.scale, name=self.name
        )

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        # gamma and beta when scaled and centred, and the moving mean and variance
        return (int(self.center) + int(self.scale) + 2) * (input_shape[-1] or 0)


LAYER_TYPES: tuple[type[LayerSpec], ...] = (
    FlattenLayer,
    DenseLayer,
    DropoutLayer,
    ReshapeLayer,
    Conv2DLayer,
    MaxPooling2DLayer,
    BatchNormalizationLayer,
)
Layer = Annotated[
    FlattenLayer | DenseLayer | DropoutLayer | ReshapeLayer | Conv2DLayer | MaxPooling2DLayer | BatchNormalizationLayer,
    Field(discriminator="type"),
]

# --- optimizers -------------------------------------------------------------------------------------------------

LearningRate = Annotated[float, Field(gt=0.0, le=10.0, description="Step size.")]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Epsilon = Annotated[float, Field(gt=0.0, le=1.0)]


class OptimizerSpec(Strict):
    def build(self) -> Any:
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return self.model_dump(exclude={"type"})


class SGDOptimizer(OptimizerSpec):
    """Stochastic gradient descent, with optional momentum and Nesterov momentum (keras.optimizers.SGD)."""

    type: Literal["sgd"]
    learning_rate: LearningRate = 0.01
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.SGD(**self._options())


class AdagradOptimizer(OptimizerSpec):
    """Adaptive per-parameter learning rates (keras.optimizers.Adagrad)."""

    type: Literal["adagrad"]
    learning_rate: LearningRate = 0.001
    initial_accumulator_value: float = Field(default=0.1, ge=0.0)
    epsilon: Epsilon = 1e-7

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.Adagrad(**self._options())


class RMSpropOptimizer(OptimizerSpec):
    """Root-mean-square propagation (keras.optimizers.RMSprop)."""

    type: Literal["rmsprop"]
    learning_rate: LearningRate = 0.001
    rho: Beta = 0.9
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    epsilon: Epsilon = 1e-7
    centered: bool = False

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.RMSprop(**self._options())


class AdamOptimizer(OptimizerSpec):
    """Adaptive moment estimation (keras.optimizers.Adam)."""

    type: Literal["adam"]
    learning_rate: LearningRate = 0.001
    beta_1: Beta = 0.9
    beta_2: Beta = 0.999
    epsilon: Epsilon = 1e-7
    amsgrad: bool = False

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.Adam(**self._options())


class AdamWOptimizer(OptimizerSpec):
    """Adam with decoupled weight decay (keras.optimizers.AdamW)."""

    type: Literal["adamw"]
    learning_rate: LearningRate = 0.001
    weight_decay: float = Field(default=0.004, ge=0.0)
    beta_1: Beta = 0.9
    beta_2: Beta = 0.999
    epsilon: Epsilon = 1e-7
    amsgrad: bool = False

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.AdamW(**self._options())


class AdamaxOptimizer(OptimizerSpec):
    """Adam with the infinity norm (keras.optimizers.Adamax)."""

    type: Literal["adamax"]
    learning_rate: LearningRate = 0.001
    beta_1: Beta = 0.9
    beta_2: Beta = 0.999
    epsilon: Epsilon = 1e-7

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.Adamax(**self._options())


class NadamOptimizer(OptimizerSpec):
    """Adam with Nesterov momentum (keras.optimizers.Nadam)."""

    type: Literal["nadam"]
    learning_rate: LearningRate = 0.001
    beta_1: Beta = 0.9
    beta_2: Beta = 0.999
    epsilon: Epsilon = 1e-7

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.Nadam(**self._options())


class AdadeltaOptimizer(OptimizerSpec):
    """Adaptive learning rate from a window of updates (keras.optimizers.Adadelta)."""

    type: Literal["adadelta"]
    learning_rate: LearningRate = 0.001
    rho: Beta = 0.95
    epsilon: Epsilon = 1e-7

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.Adadelta(**self._options())


OPTIMIZER_TYPES: tuple[type[OptimizerSpec], ...] = (
    SGDOptimizer,
    AdagradOptimizer,
    RMSpropOptimizer,
    AdamOptimizer,
    AdamWOptimizer,
    AdamaxOptimizer,
    NadamOptimizer,
    AdadeltaOptimizer,
)


OPTIMIZER_NAMES: tuple[str, ...] = tuple(get_args(cls.model_fields["type"].annotation)[0] for cls in OPTIMIZER_TYPES)


def _or_a_name(names: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    """A field that also takes one of ``names`` on its own (``"adam"`` for ``{"type": "adam"}``, ``"accuracy"``
    for ``["accuracy"]``): the schema says so."""

    def extend(schema: dict[str, Any]) -> None:
        keep: dict[str, Any] = {key: schema.pop(key) for key in ("title", "description", "default") if key in schema}
        alternative = dict(schema)
        schema.clear()
        schema.update(keep)
        schema["anyOf"] = [{"type": "string", "enum": list(names)}, alternative]

    return extend


def _optimizer_from_name(value: Any) -> Any:
    """``"adam"`` is shorthand for ``{"type": "adam"}`` with Keras' default options."""
    return {"type": value} if isinstance(value, str) else value


Optimizer = Annotated[
    SGDOptimizer
    | AdagradOptimizer
    | RMSpropOptimizer
    | AdamOptimizer
    | AdamWOptimizer
    | AdamaxOptimizer
    | NadamOptimizer
    | AdadeltaOptimizer,
    Field(discriminator="type"),
    BeforeValidator(_optimizer_from_name),
]

# --- the request ------------------------------------------------------------------------------------------------


class ModelSpec(Strict):
    name: Name | None = Field(default=None, description="Model name, shown by model.summary().")
    input_shape: list[PositiveInt] = Field(
        min_length=1, max_length=4, description="Shape of one sample, without the batch dimension."
    )
    layers: list[Layer] = Field(min_length=1, max_length=1000, description="Also capped by TRAINSERVE_MAX_LAYERS.")


def _metrics_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class CompileSpec(Strict):
    optimizer: Optimizer = Field(
        description="An optimizer name ('sgd', 'adagrad', 'rmsprop', 'adam', …) or an object with its options, "
        "e.g. {'type': 'sgd', 'momentum': 0.9, 'nesterov': true}.",
        json_schema_extra=_or_a_name(OPTIMIZER_NAMES),
    )
    loss: Annotated[str, _one_of("loss", LOSSES), _enum(LOSSES)] = Field(
        default="sparse_categorical_crossentropy", description="Loss name; decides how labels are encoded."
    )
    metrics: Annotated[
        list[Annotated[str, _one_of("metric", METRICS), _enum(METRICS)]],
        BeforeValidator(_metrics_list),
        Field(max_length=10),
    ] = Field(
        default_factory=lambda: ["accuracy"],
        description="A metric name or a list of them.",
        json_schema_extra=_or_a_name(METRICS),
    )

    def build_metrics(self) -> list[Any]:
        from keras import metrics

        return [getattr(metrics, _METRIC_CLASSES[m])(name=m) if m in _METRIC_CLASSES else m for m in self.metrics]

    @property
    def label_encoding(self) -> Literal["sparse", "binary", "one_hot"]:
        if self.loss in SPARSE_LOSSES:
            return "sparse"
        if self.loss in BINARY_LOSSES:
            return "binary"
        return "one_hot"


def exactly_one_of(first: str, second: str) -> dict[str, Any]:
    """JSON Schema for "one of the two fields is given (and not null), not both", as the service decides it."""

    def given(*names: str) -> dict[str, Any]:
        return {"required": list(names), "properties": {name: {"not": {"type": "null"}} for name in names}}

    return {"anyOf": [given(first), given(second)], "not": given(first, second)}


class DatasetSpec(Strict):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("name", "id"))

    name: Annotated[str, _one_of("dataset", tuple(BUILTIN_DATASETS)), _enum(tuple(BUILTIN_DATASETS))] | None = Field(
        default=None,
        description="A built-in dataset: digits, iris, wine, breast_cancer, mnist, fashion_mnist, cifar10.",
    )
    id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, description="An uploaded dataset's id, from POST /datasets."
    )
    rescale: float | None = Field(
        default=None, gt=0.0, description="Multiply every input by this factor, e.g. 1/255 for pixels."
    )
    test_size: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Hold out this fraction; its metrics are recorded on the job.",
    )
    random_state: int | None = Field(default=None, description="Seed of the held-out split.")

    @model_validator(mode="after")
    def _name_or_id(self) -> DatasetSpec:
        if (self.name is None) == (self.id is None):
            given = "both" if self.name is not None else "neither"
            raise PydanticCustomError(
                "dataset_reference",
                "give the dataset's name (a built-in) or its id (an upload), not {given}",
                {"given": given},
            )
        return self


class FitSpec(Strict):
    epochs: int = Field(default=5, ge=1, le=100_000, description="Also capped by TRAINSERVE_MAX_EPOCHS.")
    batch_size: int = Field(default=32, ge=1, le=65_536)
    validation_split: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction used for val_* metrics.")
    seed: int | None = Field(default=None, description="Seeds Python, NumPy and Keras for a repeatable run.")
    shuffle: bool = True
    steps_per_execution: Annotated[int, Field(ge=1, le=MAX_STEPS_PER_EXECUTION)] | Literal["auto"] = Field(
        default="auto",
        description="Training steps run per call into TensorFlow, as Keras' compile() takes it. The same arithmetic "
        "and the same numbers at any value; more steps per call spend less time between them. 'auto' chooses from "
        "the model's size so that one call takes a fraction of a second (a cancel or the time limit acts at the next "
        "call); the job records what was used.",
    )
    jit_compile: bool | Literal["auto"] = Field(
        default="auto",
        description="Compile the training step with XLA, as Keras' compile() takes it. 'auto' is Keras' own choice: "
        "XLA only where there is an accelerator (on CPUs it measured slower).",
    )


class TrainRequest(Strict):
    name: JobName | None = Field(default=None, description="A name for the job and its model.")
    model: ModelSpec
    compile: CompileSpec
    dataset: DatasetSpec
    fit: FitSpec = Field(default_factory=FitSpec)
