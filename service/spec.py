"""The training request: a Sequential model, its compile options, a dataset and fit options.

This module is the one mapping from the JSON spec to Keras objects. Each layer and optimizer is one class here:
its fields are validated by Pydantic, and its ``build()`` calls one allow-listed Keras constructor. User JSON never
reaches Keras' ``from_config``/``deserialize``. Keras is imported inside ``build()`` only, so importing this module
(the Celery parent process does) never loads TensorFlow.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StringConstraints,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service.datasets.builtin import BUILTIN_DATASETS, SEQUENCE_DATASETS

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

    # The axes of the inputs the layer takes, for a layer that takes one rank only: error messages say so.
    layout: ClassVar[tuple[str, ...] | None] = None

    def build(self) -> Any:
        raise NotImplementedError

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        """Parameters this layer adds on an input of this shape (checked against Keras' own count in tests),
        so a model's size is known before any weight is allocated."""
        return 0


def _problem(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> InitErrorDetails:
    return {"type": PydanticCustomError(kind, "{message}", {"message": message}), "loc": loc, "input": value}


def _no_name(value: Any) -> Any:
    if value is not None:
        raise PydanticCustomError("input_name", "the input takes no name: the summary does not show it")
    return value


class InputLayer(LayerSpec):
    """The model's input, as keras.Input(shape=...): only as the first layer, and instead of the model's
    input_shape."""

    type: Literal["input"]
    name: Annotated[None, BeforeValidator(_no_name)] = Field(default=None, description="The input takes no name.")
    shape: list[PositiveInt] = Field(
        min_length=1, max_length=4, description="Shape of one sample, without the batch dimension."
    )

    def build(self) -> Any:
        from keras import layers

        return layers.InputLayer(shape=tuple(self.shape))


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


Padding = Literal["valid", "same"]
IMAGES = ("batch", "height", "width", "channels")
SEQUENCES = ("batch", "steps", "features")


def _largest(value: int | list[int]) -> int:
    return value if isinstance(value, int) else max(value)


def _strides_or_dilation(strides: int | list[int], dilation_rate: int | list[int]) -> None:
    """Keras refuses a convolution that both strides and dilates."""
    if _largest(strides) > 1 and _largest(dilation_rate) > 1:
        raise PydanticCustomError(
            "strides_and_dilation",
            "strides above 1 cannot be combined with dilation_rate above 1 (Keras takes one or the other)",
        )


class Conv2DLayer(LayerSpec):
    """A 2-D convolution over (height, width, channels) inputs (keras.layers.Conv2D)."""

    layout = IMAGES

    type: Literal["conv2d"]
    filters: int = Field(ge=1, le=65_536)
    kernel_size: Pair = 3
    strides: Pair = 1
    padding: Padding = "valid"
    dilation_rate: Pair = Field(default=1, description="Spacing of the kernel's taps; with strides 1 only.")
    activation: Activation = "linear"
    use_bias: bool = True

    @model_validator(mode="after")
    def _one_of_strides_or_dilation(self) -> Conv2DLayer:
        _strides_or_dilation(self.strides, self.dilation_rate)
        return self

    def build(self) -> Any:
        from keras import layers

        return layers.Conv2D(
            self.filters,
            _pair(self.kernel_size),
            strides=_pair(self.strides),
            padding=self.padding,
            dilation_rate=_pair(self.dilation_rate),
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
        )

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        kernel = _pair(self.kernel_size)
        height, width = (kernel, kernel) if isinstance(kernel, int) else kernel
        return self.filters * (height * width * (input_shape[-1] or 0) + int(self.use_bias))


class Conv1DLayer(LayerSpec):
    """A 1-D convolution over (steps, channels) inputs, such as sequences of embeddings (keras.layers.Conv1D)."""

    layout = SEQUENCES

    type: Literal["conv1d"]
    filters: int = Field(ge=1, le=65_536)
    kernel_size: PositiveInt = Field(description="Steps the kernel spans.")
    strides: PositiveInt = 1
    padding: Literal["valid", "same", "causal"] = Field(
        default="valid", description="'causal': each output sees only the current and earlier steps."
    )
    dilation_rate: PositiveInt = Field(default=1, description="Spacing of the kernel's taps; with strides 1 only.")
    activation: Activation = "linear"
    use_bias: bool = True

    @model_validator(mode="after")
    def _one_of_strides_or_dilation(self) -> Conv1DLayer:
        _strides_or_dilation(self.strides, self.dilation_rate)
        return self

    def build(self) -> Any:
        from keras import layers

        return layers.Conv1D(
            self.filters,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
        )

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        return self.filters * (self.kernel_size * (input_shape[-1] or 0) + int(self.use_bias))


class MaxPooling2DLayer(LayerSpec):
    """Max pooling over (height, width, channels) inputs (keras.layers.MaxPooling2D)."""

    layout = IMAGES

    type: Literal["max_pooling2d"]
    pool_size: Pair = 2
    strides: Pair | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    def build(self) -> Any:
        from keras import layers

        strides = None if self.strides is None else _pair(self.strides)
        return layers.MaxPooling2D(_pair(self.pool_size), strides=strides, padding=self.padding, name=self.name)


class AveragePooling2DLayer(LayerSpec):
    """Average pooling over (height, width, channels) inputs (keras.layers.AveragePooling2D)."""

    layout = IMAGES

    type: Literal["average_pooling2d"]
    pool_size: Pair
    strides: Pair | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    def build(self) -> Any:
        from keras import layers

        strides = None if self.strides is None else _pair(self.strides)
        return layers.AveragePooling2D(_pair(self.pool_size), strides=strides, padding=self.padding, name=self.name)


class MaxPooling1DLayer(LayerSpec):
    """Max pooling over the steps of (steps, features) inputs (keras.layers.MaxPooling1D)."""

    layout = SEQUENCES

    type: Literal["max_pooling1d"]
    pool_size: PositiveInt = 2
    strides: PositiveInt | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    def build(self) -> Any:
        from keras import layers

        return layers.MaxPooling1D(self.pool_size, strides=self.strides, padding=self.padding, name=self.name)


class AveragePooling1DLayer(LayerSpec):
    """Average pooling over the steps of (steps, features) inputs (keras.layers.AveragePooling1D)."""

    layout = SEQUENCES

    type: Literal["average_pooling1d"]
    pool_size: PositiveInt
    strides: PositiveInt | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    def build(self) -> Any:
        from keras import layers

        return layers.AveragePooling1D(self.pool_size, strides=self.strides, padding=self.padding, name=self.name)


KeepDims = Annotated[bool, Field(description="Keep the pooled axes, with length 1.")]


class GlobalAveragePooling1DLayer(LayerSpec):
    """The average over all steps of (steps, features) inputs (keras.layers.GlobalAveragePooling1D)."""

    layout = SEQUENCES

    type: Literal["global_average_pooling1d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalAveragePooling1D(keepdims=self.keepdims, name=self.name)


class GlobalMaxPooling1DLayer(LayerSpec):
    """The maximum over all steps of (steps, features) inputs (keras.layers.GlobalMaxPooling1D)."""

    layout = SEQUENCES

    type: Literal["global_max_pooling1d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalMaxPooling1D(keepdims=self.keepdims, name=self.name)


class GlobalAveragePooling2DLayer(LayerSpec):
    """The average over height and width of (height, width, channels) inputs
    (keras.layers.GlobalAveragePooling2D)."""

    layout = IMAGES

    type: Literal["global_average_pooling2d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalAveragePooling2D(keepdims=self.keepdims, name=self.name)


class GlobalMaxPooling2DLayer(LayerSpec):
    """The maximum over height and width of (height, width, channels) inputs (keras.layers.GlobalMaxPooling2D)."""

    layout = IMAGES

    type: Literal["global_max_pooling2d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalMaxPooling2D(keepdims=self.keepdims, name=self.name)


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


class EmbeddingLayer(LayerSpec):
    """A learned vector for each integer index, e.g. a word's number in a vocabulary (keras.layers.Embedding):
    (steps,) indices in, (steps, output_dim) vectors out. Indices must be below input_dim."""

    type: Literal["embedding"]
    input_dim: int = Field(ge=1, le=1_000_000, description="Number of distinct indices (the vocabulary's size).")
    output_dim: int = Field(ge=1, le=1_000_000, description="Length of each index's vector.")
    mask_zero: bool = Field(
        default=False, description="Index 0 is padding: the recurrent layers after it skip those steps."
    )

    def build(self) -> Any:
        from keras import layers

        return layers.Embedding(self.input_dim, self.output_dim, mask_zero=self.mask_zero, name=self.name)

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        return self.input_dim * self.output_dim


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class RecurrentLayer(LayerSpec):
    """What keras.layers.SimpleRNN, LSTM and GRU share: over (steps, features) inputs, a state of ``units``
    updated at every step."""

    layout = SEQUENCES
    # Weight sets per unit: SimpleRNN one, GRU three, LSTM four.
    gates: ClassVar[int] = 1

    units: int = Field(ge=1, le=1_000_000, description="Size of the state, and of the output at each step.")
    activation: Activation = "tanh"
    use_bias: bool = True
    dropout: Fraction = Field(default=0.0, description="Fraction of the inputs to drop while training.")
    recurrent_dropout: Fraction = Field(default=0.0, description="Fraction of the state to drop while training.")
    return_sequences: bool = Field(
        default=False,
        description="Output every step, (steps, units), as a next recurrent layer takes; else the last step's, "
        "(units,).",
    )
    seed: int | None = Field(default=None, description="Seed of the dropout.")

    def _bias_per_unit(self) -> int:
        return int(self.use_bias)

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        return self.gates * self.units * ((input_shape[-1] or 0) + self.units + self._bias_per_unit())


class SimpleRNNLayer(RecurrentLayer):
    """A fully connected recurrent layer: the output is the next step's state (keras.layers.SimpleRNN)."""

    type: Literal["simple_rnn"]

    def build(self) -> Any:
        from keras import layers

        return layers.SimpleRNN(**self.model_dump(exclude={"type"}))


class LSTMLayer(RecurrentLayer):
    """Long short-term memory (keras.layers.LSTM)."""

    gates = 4

    type: Literal["lstm"]
    recurrent_activation: Activation = Field(default="sigmoid", description="Activation of the gates.")

    def build(self) -> Any:
        from keras import layers

        return layers.LSTM(**self.model_dump(exclude={"type"}))


class GRULayer(RecurrentLayer):
    """Gated recurrent unit (keras.layers.GRU)."""

    gates = 3

    type: Literal["gru"]
    recurrent_activation: Activation = Field(default="sigmoid", description="Activation of the gates.")
    reset_after: bool = Field(
        default=True, description="Apply the reset gate after the matrix multiplication (Keras' and cuDNN's way)."
    )

    def _bias_per_unit(self) -> int:
        # reset_after keeps separate input and recurrent biases
        return (2 if self.reset_after else 1) if self.use_bias else 0

    def build(self) -> Any:
        from keras import layers

        return layers.GRU(**self.model_dump(exclude={"type"}))


# What TensorFlow accepts in the name scopes it opens per layer; a wrapped layer runs as forward_<name> and
# backward_<name>.
_RUNNABLE_NAME = re.compile(r"[A-Za-z0-9_.>-]+")


def _runnable_inner_name(layer: RecurrentLayer) -> RecurrentLayer:
    if layer.name is not None and not _RUNNABLE_NAME.fullmatch(layer.name):
        message = (
            "a wrapped layer's name may hold only ASCII letters, digits and '_', '.', '-', '>': TensorFlow runs it "
            f"as 'forward_{layer.name}' and 'backward_{layer.name}'; name the bidirectional layer instead"
        )
        raise ValidationError.from_exception_data(
            "BidirectionalLayer", [_problem(("name",), "invalid_name", message, layer.name)]
        )
    return layer


Recurrent = Annotated[SimpleRNNLayer | LSTMLayer | GRULayer, Field(discriminator="type")]


class BidirectionalLayer(LayerSpec):
    """Runs a recurrent layer forwards and a copy of it backwards over the steps, and merges their outputs
    (keras.layers.Bidirectional)."""

    layout = SEQUENCES

    type: Literal["bidirectional"]
    layer: Annotated[Recurrent, AfterValidator(_runnable_inner_name)] = Field(
        description="The recurrent layer: a simple_rnn, lstm or gru."
    )
    merge_mode: Literal["concat", "sum", "mul", "ave"] = Field(
        default="concat", description="How the two directions' outputs are merged: 'concat' doubles the units."
    )

    def build(self) -> Any:
        from keras import layers

        return layers.Bidirectional(self.layer.build(), merge_mode=self.merge_mode, name=self.name)

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        return 2 * self.layer.params(input_shape)


LAYER_TYPES: tuple[type[LayerSpec], ...] = (
    InputLayer,
    FlattenLayer,
    DenseLayer,
    DropoutLayer,
    ReshapeLayer,
    Conv2DLayer,
    Conv1DLayer,
    MaxPooling2DLayer,
    AveragePooling2DLayer,
    MaxPooling1DLayer,
    AveragePooling1DLayer,
    GlobalAveragePooling1DLayer,
    GlobalMaxPooling1DLayer,
    GlobalAveragePooling2DLayer,
    GlobalMaxPooling2DLayer,
    BatchNormalizationLayer,
    EmbeddingLayer,
    SimpleRNNLayer,
    LSTMLayer,
    GRULayer,
    BidirectionalLayer,
)
Layer = Annotated[
    InputLayer
    | FlattenLayer
    | DenseLayer
    | DropoutLayer
    | ReshapeLayer
    | Conv2DLayer
    | Conv1DLayer
    | MaxPooling2DLayer
    | AveragePooling2DLayer
    | MaxPooling1DLayer
    | AveragePooling1DLayer
    | GlobalAveragePooling1DLayer
    | GlobalMaxPooling1DLayer
    | GlobalAveragePooling2DLayer
    | GlobalMaxPooling2DLayer
    | BatchNormalizationLayer
    | EmbeddingLayer
    | SimpleRNNLayer
    | LSTMLayer
    | GRULayer
    | BidirectionalLayer,
    Field(discriminator="type"),
]

# --- optimizers -------------------------------------------------------------------------------------------------

Rate = Annotated[float, Field(gt=0.0, le=10.0)]


class ScheduleSpec(Strict):
    """A learning rate that changes with the training step (keras.optimizers.schedules); the step counts batches,
    not epochs."""

    def build(self) -> Any:
        raise NotImplementedError


class ExponentialDecaySchedule(ScheduleSpec):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``, the exponent rounded down with ``staircase``
    (keras.optimizers.schedules.ExponentialDecay)."""

    type: Literal["exponential_decay"]
    initial_learning_rate: Rate
    decay_steps: int = Field(ge=1, le=1_000_000_000)
    decay_rate: float = Field(gt=0.0, le=10.0)
    staircase: bool = False

    def build(self) -> Any:
        from keras.optimizers import schedules

        return schedules.ExponentialDecay(
            self.initial_learning_rate, self.decay_steps, self.decay_rate, staircase=self.staircase
        )


class PiecewiseConstantDecaySchedule(ScheduleSpec):
    """``values[i]`` from step ``boundaries[i-1]`` on (keras.optimizers.schedules.PiecewiseConstantDecay)."""

    type: Literal["piecewise_constant_decay"]
    boundaries: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=100)
    values: list[Rate] = Field(min_length=2, max_length=101, description="One more value than boundaries.")

    @model_validator(mode="after")
    def _values_around_boundaries(self) -> PiecewiseConstantDecaySchedule:
        if len(self.values) != len(self.boundaries) + 1:
            raise PydanticCustomError(
                "schedule_values",
                "values needs one more entry than boundaries: {boundaries} boundaries, {values} values",
                {"boundaries": len(self.boundaries), "values": len(self.values)},
            )
        if any(later <= earlier for earlier, later in zip(self.boundaries, self.boundaries[1:], strict=False)):
            raise PydanticCustomError("schedule_boundaries", "boundaries must increase strictly")
        return self

    def build(self) -> Any:
        from keras.optimizers import schedules

        return schedules.PiecewiseConstantDecay(list(self.boundaries), list(self.values))


class CosineDecaySchedule(ScheduleSpec):
    """A cosine from ``initial_learning_rate`` down to ``alpha`` times it over ``decay_steps``, after an optional
    linear warm-up to ``warmup_target`` (keras.optimizers.schedules.CosineDecay)."""

    type: Literal["cosine_decay"]
    initial_learning_rate: float = Field(ge=0.0, le=10.0)
    decay_steps: int = Field(ge=1, le=1_000_000_000)
    alpha: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_target: Rate | None = None
    warmup_steps: int = Field(default=0, ge=0, le=1_000_000_000)

    @model_validator(mode="after")
    def _warmup_has_a_target(self) -> CosineDecaySchedule:
        if self.warmup_steps and self.warmup_target is None:
            raise PydanticCustomError("schedule_warmup", "warmup_steps needs a warmup_target to warm up to")
        if self.initial_learning_rate == 0.0 and not self.warmup_steps:
            raise PydanticCustomError(
                "schedule_zero", "initial_learning_rate 0 trains nothing unless the schedule warms up"
            )
        return self

    def build(self) -> Any:
        from keras.optimizers import schedules

        return schedules.CosineDecay(
            self.initial_learning_rate,
            self.decay_steps,
            alpha=self.alpha,
            warmup_target=self.warmup_target,
            warmup_steps=self.warmup_steps,
        )


SCHEDULE_TYPES: tuple[type[ScheduleSpec], ...] = (
    ExponentialDecaySchedule,
    PiecewiseConstantDecaySchedule,
    CosineDecaySchedule,
)
Schedule = Annotated[
    ExponentialDecaySchedule | PiecewiseConstantDecaySchedule | CosineDecaySchedule, Field(discriminator="type")
]


# Tags of the unions that tell their members apart by the value's shape rather than by a "type" (a learning rate
# is a number or a schedule object): never a field of the request, so error paths leave them out.
SHAPE_TAGS = frozenset({"rate", "schedule"})


def _rate_or_schedule(value: Any) -> str:
    return "schedule" if isinstance(value, dict | ScheduleSpec) else "rate"


LearningRate = Annotated[
    Annotated[Rate, Tag("rate")] | Annotated[Schedule, Tag("schedule")],
    Discriminator(_rate_or_schedule),
    Field(description="Step size: a number, or a schedule such as {'type': 'exponential_decay', ...}."),
]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Epsilon = Annotated[float, Field(gt=0.0, le=1.0)]


class OptimizerSpec(Strict):
    def build(self) -> Any:
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        options = {name: getattr(self, name) for name in type(self).model_fields if name != "type"}
        rate = options.get("learning_rate")
        if isinstance(rate, ScheduleSpec):
            options["learning_rate"] = rate.build()
        return options

    @property
    def schedule(self) -> ScheduleSpec | None:
        rate = getattr(self, "learning_rate", None)
        return rate if isinstance(rate, ScheduleSpec) else None


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

# --- callbacks --------------------------------------------------------------------------------------------------

Monitor = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100),
    AfterValidator(_plain_text),
    Field(
        description="What is watched: 'loss', a metric name, or either with 'val_' before it.", examples=["val_loss"]
    ),
]
Mode = Annotated[
    Literal["auto", "min", "max"],
    Field(description="Whether the monitored value should fall or rise; 'auto' as Keras decides from its name."),
]
Epochs = Annotated[int, Field(ge=0, le=100_000)]


class CallbackSpec(Strict):
    monitor: Monitor = "val_loss"
    mode: Mode = "auto"


class EarlyStoppingCallback(CallbackSpec):
    """Stops training when the monitored value has stopped improving (keras.callbacks.EarlyStopping). The job
    records the epoch it stopped at and its best epoch."""

    type: Literal["early_stopping"]
    min_delta: float = Field(default=0.0, ge=0.0, description="A smaller change is not an improvement.")
    patience: Epochs = Field(default=0, description="Epochs without improvement before stopping.")
    baseline: float | None = Field(default=None, description="Stop if the value does not beat this.")
    restore_best_weights: bool = Field(default=False, description="When it stops, go back to the best epoch's weights.")
    start_from_epoch: Epochs = Field(default=0, description="Epochs of warm-up before improvement is looked for.")

    def build(self) -> Any:
        from keras import callbacks

        return callbacks.EarlyStopping(**self.model_dump(exclude={"type"}))


class CheckpointCallback(CallbackSpec):
    """Keeps the weights of the best epoch by the monitored value, as ModelCheckpoint(save_best_only=True) does:
    the published model is that epoch's, and the job says which epoch it is."""

    type: Literal["checkpoint"]
    initial_value_threshold: float | None = Field(
        default=None, description="Only an epoch that beats this value is kept."
    )

    def build(self, filepath: str) -> Any:
        from keras import callbacks

        return callbacks.ModelCheckpoint(
            filepath,
            monitor=self.monitor,
            mode=self.mode,
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=self.initial_value_threshold,
        )


class ReduceLROnPlateauCallback(CallbackSpec):
    """Multiplies the learning rate by ``factor`` when the monitored value has stopped improving
    (keras.callbacks.ReduceLROnPlateau)."""

    type: Literal["reduce_lr_on_plateau"]
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: Epochs = 10
    min_delta: float = Field(default=0.0001, ge=0.0)
    cooldown: Epochs = Field(default=0, description="Epochs to wait after a reduction before watching again.")
    min_lr: float = Field(default=0.0, ge=0.0, le=10.0)

    def build(self) -> Any:
        from keras import callbacks

        return callbacks.ReduceLROnPlateau(**self.model_dump(exclude={"type"}))


CALLBACK_TYPES: tuple[type[CallbackSpec], ...] = (EarlyStoppingCallback, CheckpointCallback, ReduceLROnPlateauCallback)
Callback = Annotated[
    EarlyStoppingCallback | CheckpointCallback | ReduceLROnPlateauCallback, Field(discriminator="type")
]


class HeldOutValidation(Strict):
    """Validation rows held out of the training rows, as ``train_test_split`` makes them."""

    size: float = Field(gt=0.0, lt=1.0, description="The fraction of the training rows to validate on.")
    random_state: int | None = Field(default=None, description="Seed of the split.")
    stratify: bool = Field(default=False, description="Keep each class's share in both parts.")


# --- the request ------------------------------------------------------------------------------------------------


# An input layer gives the model's input shape: input_shape is set from it once the layers are validated.
_SHAPE_FROM_INPUT_LAYER = object()


def _unless_from_input_layer(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    return [] if value is _SHAPE_FROM_INPUT_LAYER else handler(value)


def _begins_with_input(layers: Any) -> bool:
    if not isinstance(layers, list) or not layers:
        return False
    first = layers[0]
    return isinstance(first, InputLayer) or (isinstance(first, dict) and first.get("type") == "input")


def _input_shape_or_input_layer(schema: dict[str, Any]) -> None:
    """The schema of "input_shape, or a first layer of type 'input' (and never a later one)"."""
    schema["required"] = [name for name in schema.get("required", []) if name != "input_shape"]
    layers = schema["properties"]["layers"]
    every = layers.pop("items")
    mapping = every["discriminator"]["mapping"]
    after_first = {
        "discriminator": {**every["discriminator"], "mapping": {k: v for k, v in mapping.items() if k != "input"}},
        "oneOf": [choice for choice in every["oneOf"] if choice != {"$ref": mapping["input"]}],
    }
    layers["prefixItems"] = [every]
    layers["items"] = after_first
    first_is_input = {"properties": {"type": {"const": "input"}}}
    schema["anyOf"] = [
        {"required": ["input_shape"], "properties": {"layers": {"prefixItems": [{"not": first_is_input}]}}},
        {
            "not": {"required": ["input_shape"]},
            "properties": {"layers": {"minItems": 2, "prefixItems": [first_is_input]}},
        },
    ]


class ModelSpec(Strict):
    """A Sequential model: its input, as input_shape or as a first layer {"type": "input", "shape": [...]} (as
    keras.Input(shape=...)), and its layers."""

    # Validation moves a first input layer's shape into input_shape and drops the layer from layers: the rest of
    # the service reads input_shape and the model's own layers either way, and model_dump() (what a job records
    # and the worker validates again) has the input_shape form. Error paths come from layer_loc and input_loc,
    # which point into the request as it was given.
    model_config = ConfigDict(json_schema_extra=_input_shape_or_input_layer)

    name: Name | None = Field(default=None, description="Model name, shown by model.summary().")
    input_shape: Annotated[
        list[PositiveInt], Field(min_length=1, max_length=4), WrapValidator(_unless_from_input_layer)
    ] = Field(
        description="Shape of one sample, without the batch dimension. Or begin the layers with "
        "{'type': 'input', 'shape': [...]}, as keras.Input(shape=...), instead."
    )
    layers: list[Layer] = Field(min_length=1, max_length=1000, description="Also capped by TRAINSERVE_MAX_LAYERS.")

    # 1 when the request began its layers with an input layer, which is not in ``layers``.
    _layers_offset: int = PrivateAttr(default=0)

    @model_validator(mode="before")
    @classmethod
    def _shape_from_an_input_layer(cls, data: Any) -> Any:
        if isinstance(data, dict) and "input_shape" not in data and _begins_with_input(data.get("layers")):
            return {**data, "input_shape": _SHAPE_FROM_INPUT_LAYER}
        return data

    @model_validator(mode="after")
    def _one_input(self) -> ModelSpec:
        first = self.layers[0]
        problems: list[InitErrorDetails] = []
        if isinstance(first, InputLayer) and self.input_shape:
            problems.append(
                _problem(
                    ("input_shape",),
                    "input_twice",
                    "give input_shape or a first layer of type 'input', not both",
                    self.input_shape,
                )
            )
        if isinstance(first, InputLayer) and len(self.layers) == 1:
            problems.append(
                _problem(("layers",), "input_alone", "the input layer needs at least one layer after it", [])
            )
        for index, layer in enumerate(self.layers[1:], start=1):
            if isinstance(layer, InputLayer):
                problems.append(
                    _problem(
                        ("layers", index),
                        "input_not_first",
                        "an input layer can only be the first layer: it is the model's input, as keras.Input",
                        layer.model_dump(),
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        if isinstance(first, InputLayer):
            self.input_shape = list(first.shape)
            self.layers = self.layers[1:]
            self._layers_offset = 1
        return self

    def layer_loc(self, index: int) -> tuple[str | int, ...]:
        """Where ``layers[index]`` is in the request as it was given."""
        return ("layers", index + self._layers_offset)

    @property
    def input_loc(self) -> tuple[str | int, ...]:
        """Where the input shape is in the request as it was given."""
        return ("layers", 0, "shape") if self._layers_offset else ("input_shape",)


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
        description="A built-in dataset: digits, iris, wine, breast_cancer, mnist, fashion_mnist, cifar10, imdb.",
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
    stratify: bool = Field(
        default=False,
        description="Keep each class's share in the held-out split, as train_test_split(stratify=y); off by default, "
        "as in scikit-learn.",
    )
    num_words: int | None = Field(
        default=None,
        ge=3,
        le=1_000_000,
        description="imdb: keep the most frequent words, as keras.datasets.imdb.load_data(num_words=...); the others "
        "become 2, out of vocabulary.",
    )
    maxlen: int | None = Field(
        default=None, ge=1, le=100_000, description="imdb: cut or pad every review to this many words (pad_sequences)."
    )
    padding: Literal["pre", "post"] = Field(default="pre", description="imdb: where shorter reviews get their zeros.")
    truncating: Literal["pre", "post"] = Field(default="pre", description="imdb: which end of a longer review is cut.")
    reshape: list[PositiveInt] | None = Field(
        default=None,
        min_length=1,
        max_length=4,
        description="Each sample reshaped, as the book's train_input.reshape(-1, 28, 28, 1): the same numbers, in "
        "the shape the model's input_shape gives.",
    )
    one_hot: bool = Field(
        default=False,
        description="Word-index sequences as one-hot vectors over the vocabulary, as keras.utils.to_categorical "
        "makes them: (maxlen,) becomes (maxlen, num_words). For imdb (with num_words) and uploaded texts.",
    )

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
    validation_split: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="The last fraction of the training rows, for val_* metrics (Keras')."
    )
    validation_data: Literal["test"] | HeldOutValidation | None = Field(
        default=None,
        description="What fit(validation_data=...) is given: 'test' for the dataset's test split (its own, or the "
        "one test_size holds out), or {'size': 0.2, 'random_state': 42} for rows held out of the training rows.",
    )
    callbacks: list[Callback] = Field(
        default_factory=list,
        max_length=10,
        description="early_stopping, checkpoint (publish the best epoch), reduce_lr_on_plateau.",
    )
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

    @property
    def has_validation(self) -> bool:
        return self.fit.validation_split > 0 or self.fit.validation_data is not None

    def logged(self) -> tuple[str, ...]:
        """What Keras logs every epoch for this request: the loss and metrics, and their val_* when validating."""
        names = ("loss", *self.compile.metrics)
        return names + tuple(f"val_{name}" for name in names) if self.has_validation else names

    def problems(self) -> list[tuple[tuple[str | int, ...], str]]:
        """What is wrong with the fit options as a whole, each with its path: what one field cannot say."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        fit = self.fit
        if fit.validation_split > 0 and fit.validation_data is not None:
            found.append(
                (
                    ("fit", "validation_split"),
                    "give validation_split or validation_data, not both (Keras would ignore validation_split)",
                )
            )
        dataset = self.dataset
        if dataset.name in SEQUENCE_DATASETS and dataset.maxlen is None:
            found.append(
                (
                    ("dataset", "maxlen"),
                    f"{dataset.name}'s reviews have every length: give maxlen, the words each is cut or padded to "
                    "(the book uses 100)",
                )
            )
        if dataset.name in SEQUENCE_DATASETS and dataset.one_hot and dataset.num_words is None:
            found.append(
                (
                    ("dataset", "num_words"),
                    f"one-hot vectors of {dataset.name}'s whole vocabulary (about 88,000 words) are too wide: give "
                    "num_words (the book uses 500)",
                )
            )
        if dataset.name not in SEQUENCE_DATASETS:
            given = ("num_words", dataset.num_words), ("maxlen", dataset.maxlen)
            for field, value in given:
                if value is not None:
                    found.append(
                        (
                            ("dataset", field),
                            f"{field} is for imdb; an uploaded .csv of texts is cut to its words and length at upload",
                        )
                    )
        logged = self.logged()
        checkpoints = 0
        for index, callback in enumerate(fit.callbacks):
            path: tuple[str | int, ...] = ("fit", "callbacks", index)
            if callback.monitor not in logged:
                hint = "" if self.has_validation else "; val_* needs validation_split or validation_data"
                found.append(
                    (
                        (*path, "monitor"),
                        f"{callback.type} monitors {callback.monitor!r}, which this fit does not log; it logs: "
                        f"{', '.join(logged)}{hint}",
                    )
                )
            if isinstance(callback, CheckpointCallback):
                checkpoints += 1
                if checkpoints > 1:
                    found.append((path, "one checkpoint decides which epoch is published; this is a second one"))
            if isinstance(callback, ReduceLROnPlateauCallback) and self.compile.optimizer.schedule is not None:
                found.append(
                    (
                        path,
                        "reduce_lr_on_plateau sets the optimizer's learning rate, but compile.optimizer.learning_rate "
                        "is a schedule, which decides it at every step; Keras refuses the two together",
                    )
                )
        return found
