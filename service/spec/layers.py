"""The layers a Sequential model may hold, each one entry: its fields with Keras' names and defaults, validated by
Pydantic, its ``build()`` calling one allow-listed Keras constructor, and its parameter count from shapes alone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service.spec.base import (
    Activation,
    Name,
    Pair,
    PositiveInt,
    Strict,
    pair,
)

# --- layers -----------------------------------------------------------------------------------------------------


class LayerSpec(Strict):
    name: Name | None = Field(default=None, description="Layer name; Keras picks one (dense, dense_1, …) if omitted.")

    # The axes of the inputs the layer takes, for a layer that takes one rank only: error messages say so.
    layout: ClassVar[tuple[str, ...] | None] = None
    # The class in keras.layers that build() makes. The Python client reads a model written in Keras back into
    # specs by it (trainserve.convert): the fields from the layer's get_config(), every other option checked
    # against the config of the layer this spec builds.
    keras_class: ClassVar[str]
    # Options of that config the spec does not decide and the model does not depend on.
    keras_unchecked: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """This spec's fields from a ``get_config()`` of its Keras class: the keys of the same names."""
        return {name: config[name] for name in cls.model_fields if name != "type" and name in config}

    def build(self) -> Any:
        raise NotImplementedError

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        """Parameters this layer adds on an input of this shape (checked against Keras' own count in tests),
        so a model's size is known before any weight is allocated."""
        return 0

    def step_values(self, input_shape: tuple[int | None, ...]) -> int:
        """Values one instance keeps in this layer beyond its output while it trains: nothing, but for a recurrent
        layer, whose gates and state at every step are kept for the backward pass."""
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

    keras_class = "InputLayer"
    # Keras names every input (input_layer, input_layer_1, …); the summary shows none of them.
    keras_unchecked = frozenset({"name"})
    type: Literal["input"]
    name: Annotated[None, BeforeValidator(_no_name)] = Field(default=None, description="The input takes no name.")
    shape: list[PositiveInt] = Field(
        min_length=1, max_length=4, description="Shape of one sample, without the batch dimension."
    )

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The shape of one sample: the batch shape without its batch dimension (checked to be free)."""
        batch_shape = config.get("batch_shape")
        return {"shape": list(batch_shape[1:])} if isinstance(batch_shape, list | tuple) and batch_shape else {}

    def build(self) -> Any:
        from keras import layers

        return layers.InputLayer(shape=tuple(self.shape))


class FlattenLayer(LayerSpec):
    """Flattens every dimension but the batch one (keras.layers.Flatten)."""

    keras_class = "Flatten"
    type: Literal["flatten"]

    def build(self) -> Any:
        from keras import layers

        return layers.Flatten(name=self.name)


class DenseLayer(LayerSpec):
    """A fully connected layer (keras.layers.Dense)."""

    keras_class = "Dense"
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

    keras_class = "Dropout"
    type: Literal["dropout"]
    rate: float = Field(ge=0.0, lt=1.0, description="Fraction of the inputs to drop.")
    seed: int | None = None

    def build(self) -> Any:
        from keras import layers

        return layers.Dropout(self.rate, seed=self.seed, name=self.name)


class ReshapeLayer(LayerSpec):
    """Reshapes each sample (keras.layers.Reshape); one dimension may be -1."""

    keras_class = "Reshape"
    type: Literal["reshape"]
    target_shape: list[Annotated[int, Field(ge=-1)]] = Field(min_length=1, max_length=4)

    def build(self) -> Any:
        from keras import layers

        return layers.Reshape(tuple(self.target_shape), name=self.name)


Padding = Literal["valid", "same"]
IMAGES = ("batch", "height", "width", "channels")
SEQUENCES = ("batch", "steps", "features")


def _sizes(options: dict[str, Any], *, rank: int) -> dict[str, Any]:
    """Sizes as a Keras config has them, one per axis ((3,) or (3, 3)), as the spec writes them: one number for
    a 1-D layer, and for a 2-D one when both axes are alike (kernel_size 3, as the book writes it)."""
    for key, value in options.items():
        if isinstance(value, list | tuple) and len(value) == rank and len(set(value)) == 1:
            options[key] = value[0]
    return options


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

    keras_class = "Conv2D"
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

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _sizes(super().keras_options(config), rank=2)

    def build(self) -> Any:
        from keras import layers

        return layers.Conv2D(
            self.filters,
            pair(self.kernel_size),
            strides=pair(self.strides),
            padding=self.padding,
            dilation_rate=pair(self.dilation_rate),
            activation=self.activation,
            use_bias=self.use_bias,
            name=self.name,
        )

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        kernel = pair(self.kernel_size)
        height, width = (kernel, kernel) if isinstance(kernel, int) else kernel
        return self.filters * (height * width * (input_shape[-1] or 0) + int(self.use_bias))


class Conv1DLayer(LayerSpec):
    """A 1-D convolution over (steps, channels) inputs, such as sequences of embeddings (keras.layers.Conv1D)."""

    keras_class = "Conv1D"
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

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _sizes(super().keras_options(config), rank=1)

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

    keras_class = "MaxPooling2D"
    layout = IMAGES

    type: Literal["max_pooling2d"]
    pool_size: Pair = 2
    strides: Pair | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _sizes(super().keras_options(config), rank=2)

    def build(self) -> Any:
        from keras import layers

        strides = None if self.strides is None else pair(self.strides)
        return layers.MaxPooling2D(pair(self.pool_size), strides=strides, padding=self.padding, name=self.name)


class AveragePooling2DLayer(LayerSpec):
    """Average pooling over (height, width, channels) inputs (keras.layers.AveragePooling2D)."""

    keras_class = "AveragePooling2D"
    layout = IMAGES

    type: Literal["average_pooling2d"]
    pool_size: Pair
    strides: Pair | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _sizes(super().keras_options(config), rank=2)

    def build(self) -> Any:
        from keras import layers

        strides = None if self.strides is None else pair(self.strides)
        return layers.AveragePooling2D(pair(self.pool_size), strides=strides, padding=self.padding, name=self.name)


class MaxPooling1DLayer(LayerSpec):
    """Max pooling over the steps of (steps, features) inputs (keras.layers.MaxPooling1D)."""

    keras_class = "MaxPooling1D"
    layout = SEQUENCES

    type: Literal["max_pooling1d"]
    pool_size: PositiveInt = 2
    strides: PositiveInt | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _sizes(super().keras_options(config), rank=1)

    def build(self) -> Any:
        from keras import layers

        return layers.MaxPooling1D(self.pool_size, strides=self.strides, padding=self.padding, name=self.name)


class AveragePooling1DLayer(LayerSpec):
    """Average pooling over the steps of (steps, features) inputs (keras.layers.AveragePooling1D)."""

    keras_class = "AveragePooling1D"
    layout = SEQUENCES

    type: Literal["average_pooling1d"]
    pool_size: PositiveInt
    strides: PositiveInt | None = Field(default=None, description="The pool_size when omitted.")
    padding: Padding = "valid"

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return _sizes(super().keras_options(config), rank=1)

    def build(self) -> Any:
        from keras import layers

        return layers.AveragePooling1D(self.pool_size, strides=self.strides, padding=self.padding, name=self.name)


KeepDims = Annotated[bool, Field(description="Keep the pooled axes, with length 1.")]


class GlobalAveragePooling1DLayer(LayerSpec):
    """The average over all steps of (steps, features) inputs (keras.layers.GlobalAveragePooling1D)."""

    keras_class = "GlobalAveragePooling1D"
    layout = SEQUENCES

    type: Literal["global_average_pooling1d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalAveragePooling1D(keepdims=self.keepdims, name=self.name)


class GlobalMaxPooling1DLayer(LayerSpec):
    """The maximum over all steps of (steps, features) inputs (keras.layers.GlobalMaxPooling1D)."""

    keras_class = "GlobalMaxPooling1D"
    layout = SEQUENCES

    type: Literal["global_max_pooling1d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalMaxPooling1D(keepdims=self.keepdims, name=self.name)


class GlobalAveragePooling2DLayer(LayerSpec):
    """The average over height and width of (height, width, channels) inputs
    (keras.layers.GlobalAveragePooling2D)."""

    keras_class = "GlobalAveragePooling2D"
    layout = IMAGES

    type: Literal["global_average_pooling2d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalAveragePooling2D(keepdims=self.keepdims, name=self.name)


class GlobalMaxPooling2DLayer(LayerSpec):
    """The maximum over height and width of (height, width, channels) inputs (keras.layers.GlobalMaxPooling2D)."""

    keras_class = "GlobalMaxPooling2D"
    layout = IMAGES

    type: Literal["global_max_pooling2d"]
    keepdims: KeepDims = False

    def build(self) -> Any:
        from keras import layers

        return layers.GlobalMaxPooling2D(keepdims=self.keepdims, name=self.name)


class BatchNormalizationLayer(LayerSpec):
    """Normalises activations with running batch statistics (keras.layers.BatchNormalization)."""

    keras_class = "BatchNormalization"
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

    keras_class = "Embedding"
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

    def step_values(self, input_shape: tuple[int | None, ...]) -> int:
        steps = input_shape[1] if len(input_shape) > 2 and input_shape[1] else 1
        return steps * self.units * (self.gates + 1)


class SimpleRNNLayer(RecurrentLayer):
    """A fully connected recurrent layer: the output is the next step's state (keras.layers.SimpleRNN)."""

    keras_class = "SimpleRNN"
    type: Literal["simple_rnn"]

    def build(self) -> Any:
        from keras import layers

        return layers.SimpleRNN(**self.model_dump(exclude={"type"}))


class LSTMLayer(RecurrentLayer):
    """Long short-term memory (keras.layers.LSTM)."""

    keras_class = "LSTM"
    gates = 4

    type: Literal["lstm"]
    recurrent_activation: Activation = Field(default="sigmoid", description="Activation of the gates.")

    def build(self) -> Any:
        from keras import layers

        return layers.LSTM(**self.model_dump(exclude={"type"}))


class GRULayer(RecurrentLayer):
    """Gated recurrent unit (keras.layers.GRU)."""

    keras_class = "GRU"
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

    keras_class = "Bidirectional"
    layout = SEQUENCES

    type: Literal["bidirectional"]
    layer: Annotated[Recurrent, AfterValidator(_runnable_inner_name)] = Field(
        description="The recurrent layer: a simple_rnn, lstm or gru."
    )
    merge_mode: Literal["concat", "sum", "mul", "ave"] = Field(
        default="concat", description="How the two directions' outputs are merged: 'concat' doubles the units."
    )

    @classmethod
    def keras_options(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The wrapped layer as Keras serialises it, under its own name: Keras renames it ``forward_<name>``."""
        options = super().keras_options(config)
        layer = options.get("layer")
        if isinstance(layer, Mapping) and isinstance(layer.get("config"), Mapping):
            inner = dict(layer["config"])
            if isinstance(inner.get("name"), str):
                inner["name"] = inner["name"].removeprefix("forward_")
            options["layer"] = {**layer, "config": inner}
        return options

    def build(self) -> Any:
        from keras import layers

        return layers.Bidirectional(self.layer.build(), merge_mode=self.merge_mode, name=self.name)

    def params(self, input_shape: tuple[int | None, ...]) -> int:
        return 2 * self.layer.params(input_shape)

    def step_values(self, input_shape: tuple[int | None, ...]) -> int:
        return 2 * self.layer.step_values(input_shape)


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
