"""The training request as a whole: the model, its compile options, the dataset and the fit options, and what is
wrong with them together."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service.datasets.builtin import BUILTIN_DATASETS, SEQUENCE_DATASETS
from service.settings import DEFAULT_POOL, POOL_PATTERN
from service.spec.base import (
    _METRIC_CLASSES,
    BINARY_LOSSES,
    LOSSES,
    MAX_STEPS_PER_EXECUTION,
    METRICS,
    SPARSE_LOSSES,
    JobName,
    Name,
    PositiveInt,
    Strict,
    enum_schema,
    one_of,
)
from service.spec.callbacks import (
    Callback,
    CheckpointCallback,
    HeldOutValidation,
    ReduceLROnPlateauCallback,
)
from service.spec.layers import (
    InputLayer,
    Layer,
    _problem,
)
from service.spec.optimizers import (
    OPTIMIZER_NAMES,
    Optimizer,
    or_a_name,
)

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
        json_schema_extra=or_a_name(OPTIMIZER_NAMES),
    )
    loss: Annotated[str, one_of("loss", LOSSES), enum_schema(LOSSES)] = Field(
        default="sparse_categorical_crossentropy", description="Loss name; decides how labels are encoded."
    )
    metrics: Annotated[
        list[Annotated[str, one_of("metric", METRICS), enum_schema(METRICS)]],
        BeforeValidator(_metrics_list),
        Field(max_length=10),
    ] = Field(
        default_factory=lambda: ["accuracy"],
        description="A metric name or a list of them.",
        json_schema_extra=or_a_name(METRICS),
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


BuiltinName = Annotated[str, one_of("dataset", tuple(BUILTIN_DATASETS)), enum_schema(tuple(BUILTIN_DATASETS))]


class DatasetSpec(Strict):
    model_config = ConfigDict(json_schema_extra=exactly_one_of("name", "id"))

    name: Annotated[str, one_of("dataset", tuple(BUILTIN_DATASETS)), enum_schema(tuple(BUILTIN_DATASETS))] | None = (
        Field(
            default=None,
            description="A built-in dataset: digits, iris, wine, breast_cancer, mnist, fashion_mnist, cifar10, imdb.",
        )
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


class TensorBoardSpec(Strict):
    """What the job's TensorBoard logs hold beyond every epoch's loss, metrics and learning rate, which they
    always have (``GET /jobs/{id}/tensorboard``)."""

    histogram_freq: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Write a histogram of every weight every this many epochs (from the first), as "
        "keras.callbacks.TensorBoard(histogram_freq=...) does; 0: none.",
    )


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
    tensorboard: TensorBoardSpec = Field(
        default_factory=TensorBoardSpec,
        description="The job's TensorBoard logs: every epoch's loss, metrics and learning rate always; weight "
        "histograms with histogram_freq, e.g. {'histogram_freq': 1}.",
    )
    jit_compile: bool | Literal["auto"] = Field(
        default="auto",
        description="Compile the training step with XLA, as Keras' compile() takes it. 'auto' is Keras' own choice: "
        "XLA only where there is an accelerator (on CPUs it measured slower).",
    )


PoolName = Annotated[str, StringConstraints(pattern=POOL_PATTERN)]


class ResourcesSpec(Strict):
    """Where the job may train: the workers of one pool."""

    pool: PoolName | None = Field(
        default=None,
        description="The pool of workers to train on, as `trainserve worker --pool NAME` offers it "
        f"(lower-case letters, digits, '-' and '_'); '{DEFAULT_POOL}' when neither this nor accelerator is given.",
    )
    accelerator: Literal["cpu", "gpu"] | None = Field(
        default=None,
        description="'gpu' is the pool 'gpu' (workers started with `trainserve worker --accelerator gpu`), unless "
        "pool names another; 'cpu' is the default pool.",
    )

    @property
    def pool_name(self) -> str:
        if self.pool is not None:
            return self.pool
        return "gpu" if self.accelerator == "gpu" else DEFAULT_POOL


class TrainRequest(Strict):
    name: JobName | None = Field(default=None, description="A name for the job and its model.")
    model: ModelSpec
    compile: CompileSpec
    dataset: DatasetSpec
    fit: FitSpec = Field(default_factory=FitSpec)
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Which workers may train the job (a named pool of them)."
    )

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
