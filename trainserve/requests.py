"""A training request from what ``Client.train`` is given: a request dict with its parts replaced, or a Keras
model with its compile options, a dataset and fit options."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any


def train_request(
    request_or_model: Mapping[str, Any] | Any,
    *,
    dataset: str | Mapping[str, Any] | None,
    optimizer: Any,
    loss: Any,
    metrics: Any,
    fit: Mapping[str, Any],
    name: str | None,
) -> dict[str, Any]:
    """The body of POST /train."""
    if isinstance(request_or_model, Mapping):
        body: dict[str, Any] = copy.deepcopy(dict(request_or_model))
        compiled: dict[str, Any] = {}
    else:
        from trainserve.convert import compile_spec, model_spec

        if dataset is None:
            raise ValueError('give the dataset to train on: dataset="digits", or {"name": ..., "rescale": ...}')
        compiled = compile_spec(request_or_model) if optimizer is None or loss is None or metrics is None else {}
        body = {"model": model_spec(request_or_model)}
        if optimizer is None and "optimizer" not in compiled:
            raise ValueError("give optimizer= (a name such as 'adam', or a keras optimizer), or compile the model")
    from trainserve.convert import callback_spec, loss_spec, metrics_spec, optimizer_spec

    compile_part = body.setdefault("compile", {})
    for key, given, convert in (
        ("optimizer", optimizer, optimizer_spec),
        ("loss", loss, loss_spec),
        ("metrics", metrics, metrics_spec),
    ):
        value = given if given is not None else compiled.get(key)
        if value is not None:
            compile_part[key] = convert(value)
    if dataset is not None:
        body["dataset"] = {"name": dataset} if isinstance(dataset, str) else dict(dataset)
    fit_part = body.setdefault("fit", {})
    fit_part.update(compiled.get("fit", {}))
    for key, value in fit.items():
        if value is None:
            continue
        if key == "callbacks":
            value = [callback_spec(callback) for callback in _sequence(value)]
        elif key == "validation_data" and isinstance(value, Mapping):
            value = dict(value)
        fit_part[key] = value
    if name is not None:
        body["name"] = name
    return body


def _sequence(value: Any) -> Sequence[Any]:
    return value if isinstance(value, Sequence) and not isinstance(value, str | Mapping) else [value]
