"""An experiment: a base train request, a search space over its fields by JSON path, how the space is searched,
what is optimised, and an optional pruner that stops trials falling behind.

Only the request's shape is checked here; whether every trial the space can make is a model Keras builds is
``service.experiments``' work, which has the datasets and the limits.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, StringConstraints, model_validator

from service.spec.base import JobName, Strict
from service.spec.request import TrainRequest

Loc = tuple[str | int, ...]

# `compile.optimizer.learning_rate`, `model.layers[1].units`, `fit.batch_size`: names joined by dots, list
# indexes in brackets.
_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*$"
SpacePath = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=_PATH),
]
# A grid or a list of choices longer than this is not a search anyone reads back.
MAX_CHOICES = 1000


def parse_path(path: str) -> Loc:
    """``model.layers[1].units`` as ``("model", "layers", 1, "units")``."""
    steps: list[str | int] = []
    position = 0
    while position < len(path):
        match = _STEP.match(path, position)
        if match is None or (position == 0 and path.startswith(".")):
            raise ValueError(f"{path!r} is not a path such as model.layers[1].units")
        name, index = match.groups()
        steps.append(name if name is not None else int(index))
        position = match.end()
    return tuple(steps)


class ChoiceSpace(Strict):
    """One of these values, as the field takes it: a number, a name, or a whole object such as an optimizer."""

    type: Literal["choice"]
    values: list[JsonValue] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceSpace:
        seen = [json.dumps(value, sort_keys=True) for value in self.values]
        if len(set(seen)) != len(seen):
            raise ValueError("each value may appear once")
        return self

    @property
    def size(self) -> int:
        return len(self.values)

    def holds(self, value: Any) -> bool:
        return json.dumps(value, sort_keys=True) in {json.dumps(v, sort_keys=True) for v in self.values}

    def grid(self) -> list[Any]:
        return list(self.values)


class IntSpace(Strict):
    """An integer from ``low`` to ``high``, both included, every ``step``; ``log`` samples its logarithm evenly."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntSpace:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("a log scale needs low >= 1 and step 1")
        return self

    @property
    def size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def holds(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value in range(self.low, self.high + 1, self.step)
        )

    def grid(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))


class FloatSpace(Strict):
    """A number from ``low`` to ``high``; ``log`` samples its logarithm evenly (learning rates); ``step`` makes it
    a grid of evenly spaced values (needed by grid search)."""

    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatSpace:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        if self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        if self.step is not None and (self.high - self.low) / self.step > MAX_CHOICES:
            raise ValueError(f"step {self.step:g} makes more than {MAX_CHOICES} values from low to high")
        return self

    def holds(self, value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and self.low <= value <= self.high

    @property
    def size(self) -> int | None:
        """How many values it holds: None for a continuous range."""
        if self.step is None:
            return 1 if self.low == self.high else None
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1

    def grid(self) -> list[Any]:
        if self.step is None:
            return [self.low]
        return [round(self.low + i * self.step, 12) for i in range(self.size or 1)]


Space = Annotated[ChoiceSpace | IntSpace | FloatSpace, Field(discriminator="type")]


class Search(Strict):
    type: Literal["grid", "random", "tpe"] = Field(
        default="tpe",
        description="'grid': every combination once, in the order the values are given (each space a choice, an "
        "int range or a float range with a step); 'random': independent draws; 'tpe': Optuna's tree-structured "
        "Parzen estimator, which draws more where the finished trials did well.",
    )
    seed: int | None = Field(default=None, description="The same seed draws the same trials.")


class Objective(Strict):
    metric: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        default="accuracy",
        description="'loss' or a compiled metric; with source 'last_epoch' or 'best_epoch', any name the fit logs "
        "(e.g. 'val_accuracy').",
    )
    direction: Literal["max", "min"] = "max"
    source: Literal["evaluation", "last_epoch", "best_epoch"] = Field(
        default="evaluation",
        description="'evaluation': the published model on the dataset's held-out test split; 'last_epoch' or "
        "'best_epoch': the metric of the training history's last or best epoch.",
    )


class Pruner(Strict):
    type: Literal["median", "successive_halving", "hyperband"] = Field(
        description="'median': stop a trial whose value at an epoch is worse than the median of the earlier "
        "trials' at that epoch; 'successive_halving' and 'hyperband': keep the best 1/reduction_factor at each "
        "rung of epochs."
    )
    n_startup_trials: int = Field(default=2, ge=0, le=10_000, description="median: trials that are never pruned.")
    n_warmup_steps: int = Field(default=1, ge=0, le=100_000, description="median: epochs before pruning starts.")
    min_resource: int = Field(default=1, ge=1, le=100_000, description="Epochs before the first rung.")
    reduction_factor: int = Field(default=3, ge=2, le=100)


class ExperimentRequest(Strict):
    name: JobName | None = Field(
        default=None, description="The experiment's name; its best model is published under it when asked."
    )
    base: TrainRequest = Field(description="The train request every trial starts from.")
    space: dict[SpacePath, Space] = Field(
        min_length=1,
        max_length=50,
        description="What each trial changes in the base request, by JSON path: "
        "{'compile.optimizer': {'type': 'choice', 'values': ['sgd', 'adam']}, "
        "'compile.optimizer.learning_rate': {'type': 'float', 'low': 1e-4, 'high': 1e-1, 'log': true}}. "
        "A shorter path is applied first, so a path inside a chosen object changes that object.",
    )
    search: Search = Field(default_factory=Search)
    objective: Objective = Field(default_factory=Objective)
    max_trials: int | None = Field(
        default=None,
        ge=1,
        description="Trials in all (refused ones included); for grid search at most, and by default, the grid's "
        "size; else 20 by default. Also capped by TRAINSERVE_MAX_EXPERIMENT_TRIALS.",
    )
    max_parallel: int = Field(default=2, ge=1, le=1000, description="Trials queued or running at once.")
    pruner: Pruner | None = Field(
        default=None,
        description="Stops trials whose objective metric, watched every epoch (its val_ form when the fit "
        "validates, for the 'evaluation' source), falls behind the others'.",
    )
    enqueue: list[dict[SpacePath, JsonValue]] = Field(
        default_factory=list,
        max_length=100,
        description="Trials to run first, before the sampler's own, each as values by path (a known baseline, "
        "say), as Optuna's enqueue_trial; a path left out is sampled.",
    )
    publish: bool = Field(
        default=True, description="Publish the best trial's model under the experiment's name when it ends."
    )

    @property
    def paths(self) -> list[tuple[str, Loc]]:
        """The space's paths, each with its steps, shortest first (a path inside a replaced object after it)."""
        return sorted(((path, parse_path(path)) for path in self.space), key=lambda item: (len(item[1]), item[0]))

    def size(self) -> int | None:
        """Distinct trials the space holds, or None when one of its ranges is continuous."""
        total = 1
        for space in self.space.values():
            size = space.size
            if size is None:
                return None
            total *= size
        return total

    def trials_wanted(self) -> int:
        size = self.size() if self.search.type == "grid" else None
        if self.max_trials is not None:
            return self.max_trials if size is None else min(self.max_trials, size)
        return size if size is not None else 20

    def problems(self) -> list[tuple[Loc, str]]:
        """What is wrong with the search as a whole, each with its path."""
        found: list[tuple[Loc, str]] = []
        for index, trial in enumerate(self.enqueue):
            for path, value in trial.items():
                space = self.space.get(path)
                if space is None:
                    found.append((("enqueue", index, path), f"{path} is not a path of the space"))
                elif not space.holds(value):
                    found.append((("enqueue", index, path), f"{json.dumps(value)} is not a value of its space"))
        if self.search.type == "grid":
            for path, space in self.space.items():
                if space.size is None:
                    found.append(
                        (
                            ("space", path),
                            "grid search takes each value once: give this float range a step, or make it a choice",
                        )
                    )
        return found


def with_values(base: dict[str, Any], steps: list[tuple[str, Loc]], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the request ``base`` (its JSON) with each path set to its value, shortest path first. Raises
    KeyError with the path whose parent is not in the request."""
    request: dict[str, Any] = json.loads(json.dumps(base))
    for path, loc in steps:
        parent: Any = request
        for depth, step in enumerate(loc[:-1]):
            try:
                child = parent[step]
            except (KeyError, IndexError, TypeError):
                raise KeyError(path) from None
            if isinstance(child, str) and isinstance(loc[depth + 1], str):
                # An optimizer given by name ("adam") takes options as {"type": "adam", ...}.
                child = parent[step] = {"type": child}
            parent = child
        last = loc[-1]
        fits = isinstance(last, str) if isinstance(parent, dict) else isinstance(last, int) and last < len(parent)
        if not isinstance(parent, dict | list) or not fits:
            raise KeyError(path)
        container: Any = parent
        container[last] = values[path]
    return request
