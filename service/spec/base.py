"""What every part of the request shares: Keras' activation, loss and metric names, the checks of names and
choices, and the strict base model every part is."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

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


def one_of(kind: str, known: tuple[str, ...]) -> AfterValidator:
    """Refuses a string not in ``known`` with a suggestion (``did you mean``) rather than Pydantic's list of every
    literal; ``enum_schema`` declares the same choices in the schema."""

    def check(value: str) -> str:
        if value not in known:
            raise unknown_name_error(kind, value, known)
        return value

    return AfterValidator(check)


def enum_schema(known: tuple[str, ...]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "enum": list(known)})


def plain_text(value: str) -> str:
    """Names are shown in terminals and tables and stored in every database: no NUL or other control characters."""
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise PydanticCustomError("invalid_name", "names may not hold control characters (such as NUL or newlines)")
    return value


def keras_name(value: str) -> str:
    if "/" in value:
        raise PydanticCustomError("invalid_name", "names may be any text except '/', which Keras reserves")
    return plain_text(value)


def _usable_activation(value: str) -> str:
    if value in UNUSABLE_ACTIVATIONS:
        message = f"activation {value!r} cannot be used in a layer: {UNUSABLE_ACTIVATIONS[value]}"
        raise PydanticCustomError("unusable_activation", "{message}", {"message": message})
    return value


Activation = Annotated[
    str,
    AfterValidator(_usable_activation),
    one_of("activation", ACTIVATIONS),
    enum_schema(ACTIVATIONS),
    Field(description="A Keras activation name such as 'relu', 'sigmoid' or 'softmax'.", examples=["relu"]),
]
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(keras_name),
    Field(description="Any Unicode text except '/' and control characters.", examples=["hidden"]),
]
JobName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    AfterValidator(plain_text),
    Field(description="Any Unicode text but control characters.", examples=["digits relu + adam"]),
]
PositiveInt = Annotated[int, Field(ge=1)]
Pair = PositiveInt | Annotated[list[PositiveInt], Field(min_length=2, max_length=2)]


def format_path(loc: Sequence[str | int]) -> str:
    """A location in a request as its JSON path reads: ``("model", "layers", 1, "units")`` is
    ``model.layers[1].units``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def pair(value: int | list[int]) -> int | tuple[int, int]:
    return value if isinstance(value, int) else (value[0], value[1])


class Strict(BaseModel):
    """Every part of a request: unknown fields are refused, and values must have the type the schema says (no 0
    for false, no "5" for 5), so that the OpenAPI document is exactly what the service accepts."""

    model_config = ConfigDict(extra="forbid", strict=True)
