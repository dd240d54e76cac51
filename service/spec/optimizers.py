"""Optimizers and learning-rate schedules, each one entry that builds one allow-listed Keras object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from service.spec.base import (
    Strict,
)

# --- optimizers -------------------------------------------------------------------------------------------------

Rate = Annotated[float, Field(gt=0.0, le=10.0)]


class ScheduleSpec(Strict):
    """A learning rate that changes with the training step (keras.optimizers.schedules); the step counts batches,
    not epochs."""

    # The class in keras.optimizers.schedules that build() makes (see LayerSpec.keras_class).
    keras_class: ClassVar[str]

    def build(self) -> Any:
        raise NotImplementedError


class ExponentialDecaySchedule(ScheduleSpec):
    """``initial_learning_rate * decay_rate ** (step / decay_steps)``, the exponent rounded down with ``staircase``
    (keras.optimizers.schedules.ExponentialDecay)."""

    keras_class = "ExponentialDecay"

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

    keras_class = "PiecewiseConstantDecay"

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

    keras_class = "CosineDecay"

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
    # The class in keras.optimizers that build() makes (see LayerSpec.keras_class).
    keras_class: ClassVar[str]

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

    keras_class = "SGD"

    type: Literal["sgd"]
    learning_rate: LearningRate = 0.01
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)
    nesterov: bool = False

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.SGD(**self._options())


class AdagradOptimizer(OptimizerSpec):
    """Adaptive per-parameter learning rates (keras.optimizers.Adagrad)."""

    keras_class = "Adagrad"

    type: Literal["adagrad"]
    learning_rate: LearningRate = 0.001
    initial_accumulator_value: float = Field(default=0.1, ge=0.0)
    epsilon: Epsilon = 1e-7

    def build(self) -> Any:
        from keras import optimizers

        return optimizers.Adagrad(**self._options())


class RMSpropOptimizer(OptimizerSpec):
    """Root-mean-square propagation (keras.optimizers.RMSprop)."""

    keras_class = "RMSprop"

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

    keras_class = "Adam"

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

    keras_class = "AdamW"

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

    keras_class = "Adamax"

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

    keras_class = "Nadam"

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

    keras_class = "Adadelta"

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


def or_a_name(names: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
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
