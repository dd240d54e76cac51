"""GET /spec/options: what a training request can choose from, read from the spec's own classes. Every layer type,
optimizer, schedule and callback is there with the fields the spec gives it: a request made of the options' own
values and defaults is one the spec accepts and fills in the same way, and a value just past an option's bound is one
it refuses. The datasets are the built-in ones and the uploads, with their shapes and classes; the answer carries
an ETag that changes when they do."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api.option_schemas import Options
from service.datasets.builtin import BUILTIN_DATASETS
from service.settings import Settings
from service.spec import (
    ACTIVATIONS,
    CALLBACK_TYPES,
    LAYER_TYPES,
    LOSSES,
    METRICS,
    OPTIMIZER_TYPES,
    SCHEDULE_TYPES,
    CompileSpec,
    FitSpec,
    Strict,
)
from service.spec.options import tag_of
from tests.datafiles import images_zip, upload


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, redis_url: str, keras_cache: Path) -> Iterator[TestClient]:
    """The API with a database of its own: no uploads but this module's."""
    from service.api.app import create_app

    settings = Settings(
        home=tmp_path_factory.mktemp("options"),
        redis_url=redis_url,
        keras_cache=keras_cache,
        max_layers=12,
        max_epochs=40,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def options(app: TestClient) -> dict[str, Any]:
    response = app.get("/spec/options")
    assert response.status_code == 200, response.text
    Options.model_validate(response.json())  # the answer is what the OpenAPI document says
    answer: dict[str, Any] = response.json()
    return answer


SECTIONS: dict[str, tuple[type[Strict], ...]] = {
    "layers": LAYER_TYPES,
    "optimizers": OPTIMIZER_TYPES,
    "schedules": SCHEDULE_TYPES,
    "callbacks": CALLBACK_TYPES,
}
KINDS = [(section, cls) for section, classes in SECTIONS.items() for cls in classes]


def kind_of(options: dict[str, Any], section: str, cls: type[Strict]) -> dict[str, Any]:
    found: dict[str, Any] = next(option for option in options[section] if option["type"] == tag_of(cls))
    return found


def a_value(field: dict[str, Any], options: dict[str, Any]) -> Any:
    """A value of the field's main form taken from the options alone: its lowest integer, a number inside its
    bounds, its first choice, …"""
    kind = field["type"]
    if kind == "integer":
        return field.get("minimum", field.get("exclusive_minimum", -1) + 1)
    if kind == "number":
        low = field.get("minimum", field.get("exclusive_minimum", 0.0))
        high = field.get("maximum", field.get("exclusive_maximum", math.inf))
        return (low + high) / 2 if high < math.inf else low + 1.0
    if kind == "boolean":
        return True
    if kind == "string":
        return "x" * field.get("min_length", 1)
    if kind == "choice":
        return field["choices"][0]
    if kind == "list":
        return [a_value(field["items"], options)] * field.get("min_items", 1)
    if kind == "object" and "of" in field:
        inner = next(option for option in options[field["of"]] if option["type"] == field["choices"][0])
        return {"type": inner["type"], **{f["name"]: a_value(f, options) for f in inner["fields"] if f["required"]}}
    return {f["name"]: a_value(f, options) for f in field["fields"] if f["required"]}


@pytest.mark.parametrize(("section", "cls"), KINDS, ids=[tag_of(cls) for _, cls in KINDS])
def test_every_type_is_there_with_the_specs_fields_and_defaults(
    options: dict[str, Any], section: str, cls: type[Strict]
) -> None:
    option = kind_of(options, section, cls)
    fields = {field["name"]: field for field in option["fields"]}
    settable = {name for name in cls.model_fields if name != "type"} - ({"name"} if tag_of(cls) == "input" else set())
    assert set(fields) == settable
    assert option["description"] == " ".join((cls.__doc__ or "").split())
    for name, field in fields.items():
        assert field["required"] == cls.model_fields[name].is_required(), name
    # The required fields, filled from the options alone, make one the spec accepts; everything left out is then
    # the default the options say.
    body = {"type": tag_of(cls), **{n: a_value(f, options) for n, f in fields.items() if f["required"]}}
    made = cls.model_validate(body).model_dump(mode="json")
    for name, field in fields.items():
        if not field["required"]:
            assert made[name] == field["default"], name


@pytest.mark.parametrize(("section", "cls"), KINDS, ids=[tag_of(cls) for _, cls in KINDS])
def test_a_number_past_its_bound_is_refused_by_the_spec(
    options: dict[str, Any], section: str, cls: type[Strict]
) -> None:
    option = kind_of(options, section, cls)
    base = {"type": tag_of(cls), **{f["name"]: a_value(f, options) for f in option["fields"] if f["required"]}}
    for field in option["fields"]:
        if field["type"] not in ("integer", "number"):
            continue
        step = 1 if field["type"] == "integer" else 1e-9
        # Past each bound: one step beyond an inclusive one, the bound itself for an exclusive one.
        beyond = {"minimum": -step, "maximum": step, "exclusive_minimum": 0, "exclusive_maximum": 0}
        for key, offset in beyond.items():
            if key in field:
                bad = int(field[key] + offset) if field["type"] == "integer" else float(field[key] + offset)
                with pytest.raises(ValidationError) as refused:
                    cls.model_validate({**base, field["name"]: bad})
                assert refused.value.errors()[0]["loc"][0] == field["name"]
                cls.model_validate({**base, field["name"]: a_value(field, options)})


def test_what_a_keras_learner_reads(options: dict[str, Any]) -> None:
    layers = {option["type"]: option for option in options["layers"]}
    assert list(layers) == [tag_of(cls) for cls in LAYER_TYPES]
    dense = {field["name"]: field for field in layers["dense"]["fields"]}
    assert dense["units"] == {
        "name": "units",
        "type": "integer",
        "minimum": 1,
        "maximum": 1_000_000,
        "required": True,
        "nullable": False,
        "description": "Number of neurons.",
        "or": [],
    }
    assert dense["activation"]["type"] == "choice"
    assert dense["activation"]["choices"] == list(ACTIVATIONS)
    assert dense["activation"]["default"] == "linear"
    assert dense["use_bias"]["default"] is True
    conv = {field["name"]: field for field in layers["conv2d"]["fields"]}
    assert conv["kernel_size"]["type"] == "integer"
    assert conv["kernel_size"]["or"] == [
        {"type": "list", "items": {"type": "integer", "minimum": 1}, "min_items": 2, "max_items": 2}
    ]
    assert conv["padding"]["choices"] == ["valid", "same"]
    assert layers["conv2d"]["takes"] == ["batch", "height", "width", "channels"]
    wrapped = {field["name"]: field for field in layers["bidirectional"]["fields"]}["layer"]
    assert (wrapped["type"], wrapped["of"], wrapped["choices"]) == ("object", "layers", ["simple_rnn", "lstm", "gru"])

    sgd = {field["name"]: field for field in kind_of(options, "optimizers", OPTIMIZER_TYPES[0])["fields"]}
    assert (sgd["learning_rate"]["default"], sgd["momentum"]["default"], sgd["nesterov"]["default"]) == (
        0.01,
        0.0,
        False,
    )
    schedules = ["exponential_decay", "piecewise_constant_decay", "cosine_decay"]
    assert sgd["learning_rate"]["or"] == [{"type": "object", "of": "schedules", "choices": schedules}]
    assert [option["type"] for option in options["optimizers"]] == [tag_of(cls) for cls in OPTIMIZER_TYPES]
    assert [option["type"] for option in options["callbacks"]] == [tag_of(cls) for cls in CALLBACK_TYPES]

    assert options["activations"] == list(ACTIVATIONS)
    assert options["metrics"] == list(METRICS)
    assert [loss["name"] for loss in options["losses"]] == list(LOSSES)
    for loss in options["losses"]:
        assert loss["labels"] == CompileSpec(optimizer="adam", loss=loss["name"]).label_encoding  # type: ignore[arg-type]
    compile_fields = {field["name"]: field for field in options["compile"]}
    assert compile_fields["loss"]["default"] == "sparse_categorical_crossentropy"
    assert compile_fields["metrics"]["default"] == ["accuracy"]
    fit = {field["name"]: field for field in options["fit"]}
    defaults = FitSpec().model_dump(mode="json")
    assert {name: field["default"] for name, field in fit.items()} == defaults
    assert fit["epochs"]["minimum"] == 1
    assert fit["validation_data"]["choices"] == ["test"]
    held_out = fit["validation_data"]["or"][0]["fields"]
    assert [field["name"] for field in held_out] == ["size", "random_state", "stratify"]
    assert {field["name"] for field in options["dataset"]} >= {"name", "id", "rescale", "test_size", "reshape"}
    assert [field["name"] for field in options["request"]] == ["name"]
    assert options["request"][0]["max_length"] == 200
    resources = {field["name"]: field for field in options["resources"]}
    assert resources["accelerator"]["choices"] == ["cpu", "gpu"]
    assert resources["pool"]["default"] is None


def test_the_datasets_a_job_can_use(app: TestClient, options: dict[str, Any], keras_cache: Path) -> None:
    assert options["limits"] == {"max_layers": 12, "max_epochs": 40, "max_model_params": 50_000_000}
    builtins = {option["name"]: option for option in options["datasets"] if option["source"] != "upload"}
    assert list(builtins) == list(BUILTIN_DATASETS)
    for name, info in BUILTIN_DATASETS.items():
        assert builtins[name]["dataset"] == {"name": name}
        assert builtins[name]["input_shape"] == list(info.input_shape)
        assert builtins[name]["num_classes"] == info.num_classes
    assert builtins["digits"]["value_range"] == [0.0, 16.0]
    assert builtins["digits"]["test_rows"] == 0
    fashion = builtins["fashion_mnist"]
    assert (fashion["input_shape"], fashion["num_classes"], fashion["value_range"]) == ([28, 28], 10, [0.0, 255.0])
    assert fashion["class_names"][0] == "T-shirt/top"
    assert fashion["available_offline"], "the test Keras cache holds a small Fashion-MNIST"
    assert not builtins["cifar10"]["available_offline"]
    assert builtins["imdb"]["sequences"] is True
    assert builtins["imdb"]["input_shape"] == []
    assert options["uploads"] == 0

    first = app.get("/spec/options")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-cache"
    unchanged = app.get("/spec/options", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag

    status, uploaded = upload(app, "colours.zip", images_zip(per_class=3, size=4), image_size="4,4")
    assert status == 201, uploaded
    after = app.get("/spec/options", headers={"If-None-Match": etag})
    assert after.status_code == 200, "an upload changes the options"
    assert after.headers["etag"] != etag
    ours = next(option for option in after.json()["datasets"] if option["source"] == "upload")
    assert ours["dataset"] == {"id": uploaded["dataset_id"]}
    assert ours["input_shape"] == [4, 4, 3]
    assert ours["num_classes"] == uploaded["num_classes"]
    assert ours["class_names"] == uploaded["class_names"]
    assert ours["value_range"] == [uploaded["stats"]["min"], uploaded["stats"]["max"]]
    assert after.json()["uploads"] == 1
    # A request made with what the options say of the upload is one the service builds.
    request = {
        "model": {
            "input_shape": ours["input_shape"],
            "layers": [{"type": "flatten"}, {"type": "dense", "units": ours["num_classes"], "activation": "softmax"}],
        },
        "compile": {"optimizer": "adam"},
        "dataset": ours["dataset"],
    }
    assert app.post("/train?dry_run=true", json=request).status_code == 200
