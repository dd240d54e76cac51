"""What a training request can hold, as a form that builds one needs it: every layer type, optimizer, learning-rate
schedule and callback with its fields (type, default, bounds, choices, description), the fields of the model,
compile, dataset and fit parts, and the activation, loss and metric names.

All of it is read from the spec's own classes and their JSON schema (the one `/docs` shows), never written out a
second time: a new layer type or field appears here with nothing else to change.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python

from service.spec.base import ACTIVATIONS, BINARY_LOSSES, LOSSES, METRICS, SPARSE_LOSSES, Strict
from service.spec.callbacks import CALLBACK_TYPES
from service.spec.layers import LAYER_TYPES
from service.spec.optimizers import OPTIMIZER_TYPES, SCHEDULE_TYPES
from service.spec.request import CompileSpec, DatasetSpec, FitSpec, ModelSpec, ResourcesSpec, TrainRequest

# The request's parts, each described in its own list.
PARTS = ("model", "compile", "dataset", "fit", "resources")
Section = Literal["layers", "optimizers", "schedules", "callbacks"]
FormType = Literal["integer", "number", "boolean", "string", "choice", "list", "object"]
# The kinds a request's parts come in, each told apart by its "type".
KINDS: dict[Section, tuple[type[Strict], ...]] = {
    "layers": LAYER_TYPES,
    "optimizers": OPTIMIZER_TYPES,
    "schedules": SCHEDULE_TYPES,
    "callbacks": CALLBACK_TYPES,
}


class Form(BaseModel):
    """One form a value may take."""

    model_config = ConfigDict(populate_by_name=True)

    type: FormType = Field(
        description="integer, number, boolean, string; choice (one of `choices`); list (of `items`); object (with "
        "`fields`, or one of the types named in `choices`, described in the list `of` names)."
    )
    minimum: int | float | None = None
    maximum: int | float | None = None
    exclusive_minimum: int | float | None = Field(default=None, description="The value must be above this.")
    exclusive_maximum: int | float | None = Field(default=None, description="The value must be below this.")
    min_length: int | None = Field(default=None, description="Of a string.")
    max_length: int | None = Field(default=None, description="Of a string.")
    choices: list[Any] | None = Field(
        default=None, description="A choice's allowed values; an object's allowed `type`s."
    )
    of: Section | None = Field(default=None, description="Where an object's types are described.")
    fields: list[FieldOption] | None = Field(default=None, description="A plain object's fields.")
    items: Form | None = Field(default=None, description="What each item of a list is.")
    min_items: int | None = None
    max_items: int | None = None


class FieldOption(Form):
    """A field of a part of the request: its main form inline, the others in `or`."""

    name: str
    description: str | None = None
    required: bool
    default: Any = Field(default=None, description="What the field is when it is left out (if it is not required).")
    nullable: bool = Field(default=False, description="Whether null is accepted (the same as leaving it out).")
    alternatives: list[Form] = Field(
        default_factory=list,
        alias="or",
        description="Other forms the value may take instead: e.g. a schedule for a learning rate, a pair for a "
        "kernel size, 'auto' for steps_per_execution.",
    )


class TypeOption(BaseModel):
    """A layer type, an optimizer, a schedule or a callback: what its `type` is, and its other fields."""

    type: str = Field(examples=["dense"])
    description: str
    takes: list[str] | None = Field(
        default=None,
        description="A layer that takes inputs of one rank only: their axes, e.g. (batch, height, width, channels).",
    )
    fields: list[FieldOption]


class LossOption(BaseModel):
    name: str
    labels: Literal["sparse", "binary", "one_hot"] = Field(
        description="How it takes the class labels: class numbers, 0/1 with one output unit, or one-hot rows."
    )


class SpecOptions(BaseModel):
    """Everything a request's spec may choose from, with its fields."""

    layers: list[TypeOption]
    optimizers: list[TypeOption]
    schedules: list[TypeOption] = Field(description="Learning-rate schedules, in place of a number.")
    callbacks: list[TypeOption]
    activations: list[str]
    losses: list[LossOption]
    metrics: list[str]
    request: list[FieldOption] = Field(
        description="The fields of the request itself (its name) but its parts, each of which has its own list."
    )
    model: list[FieldOption] = Field(description="The fields of `model`.")
    compile: list[FieldOption] = Field(description="The fields of `compile`.")
    dataset: list[FieldOption] = Field(description="The fields of `dataset`.")
    fit: list[FieldOption] = Field(description="The fields of `fit`.")
    resources: list[FieldOption] = Field(description="The fields of `resources`: the pool of workers to train on.")


def tag_of(cls: type[Strict]) -> str:
    """The ``type`` a request gives for this class."""
    tag: str = get_args(cls.model_fields["type"].annotation)[0]
    return tag


# Where each class is described, by the title its JSON schema has.
_SECTION_OF_TITLE: dict[str, Section] = {cls.__name__: section for section, kinds in KINDS.items() for cls in kinds}


def _text(value: Any) -> str | None:
    return " ".join(str(value).split()) if value else None


def _resolve(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    return defs[ref.rsplit("/", 1)[1]] if isinstance(ref, str) else schema


def _alternatives(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The schemas a value may match, a discriminated union counting as one."""
    schema = _resolve(schema, defs)
    if "discriminator" in schema or "properties" in schema:
        return [schema]  # one object, whatever else (an anyOf of required fields) it says of itself
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return [alternative for part in schema[key] for alternative in _alternatives(part, defs)]
    return [schema]


def _set(**given: Any) -> Form:
    """A form with only what its schema says set: an answer leaves out what it does not (``exclude_unset``)."""
    return Form.model_validate({key: value for key, value in given.items() if value is not None})


def _form(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Form:
    schema = _resolve(schema, defs)
    if "discriminator" in schema:
        members = [_resolve(part, defs) for part in schema["oneOf"]]
        sections = {_SECTION_OF_TITLE[member.get("title", "")] for member in members}
        assert len(sections) == 1, f"one kind of object per union: {members}"
        return _set(
            type="object", of=sections.pop(), choices=[member["properties"]["type"]["const"] for member in members]
        )
    if schema.get("type") == "object":
        title = schema.get("title", "")
        if title in _SECTION_OF_TITLE:
            member = next(cls for cls in KINDS[_SECTION_OF_TITLE[title]] if cls.__name__ == title)
            return _set(type="object", of=_SECTION_OF_TITLE[title], choices=[tag_of(member)])
        return _set(type="object", fields=_fields(schema, defs))
    if "const" in schema:
        return _set(type="choice", choices=[schema["const"]])
    if "enum" in schema:
        return _set(type="choice", choices=list(schema["enum"]))
    kind = schema.get("type")
    if kind == "array":
        return _set(
            type="list",
            items=_form(schema["items"], defs) if "items" in schema else None,
            min_items=schema.get("minItems"),
            max_items=schema.get("maxItems"),
        )
    if kind in ("integer", "number"):
        return _set(
            type=kind,
            minimum=schema.get("minimum"),
            maximum=schema.get("maximum"),
            exclusive_minimum=schema.get("exclusiveMinimum"),
            exclusive_maximum=schema.get("exclusiveMaximum"),
        )
    if kind == "string":
        return _set(type="string", min_length=schema.get("minLength"), max_length=schema.get("maxLength"))
    if kind == "boolean":
        return _set(type="boolean")
    raise ValueError(f"a field of a form the options cannot describe: {dict(schema)}")


def _fields(
    schema: Mapping[str, Any],
    defs: Mapping[str, Any],
    model: type[BaseModel] | None = None,
    skip: Sequence[str] = (),
) -> list[FieldOption]:
    required = set(schema.get("required", ()))
    found: list[FieldOption] = []
    for name, prop in schema.get("properties", {}).items():
        if (name == "type" and "const" in prop) or name in skip:
            continue  # the tag itself, or what is described elsewhere
        alternatives = _alternatives(prop, defs)
        nullable = any(alternative.get("type") == "null" for alternative in alternatives)
        forms = [_form(alternative, defs) for alternative in alternatives if alternative.get("type") != "null"]
        if not forms:
            continue  # a field that can only be null: nothing to choose
        field: dict[str, Any] = {
            **forms[0].model_dump(exclude_unset=True),
            "name": name,
            "required": name in required,
            "nullable": nullable,
            "or": forms[1:],
        }
        description = _text(prop.get("description") or _resolve(prop, defs).get("description"))
        if description:
            field["description"] = description
        if name not in required:
            default = prop.get("default")
            if model is not None and name in model.model_fields and not model.model_fields[name].is_required():
                default = to_jsonable_python(model.model_fields[name].get_default(call_default_factory=True))
            field["default"] = default
        found.append(FieldOption.model_validate(field))
    return found


def _model_fields(model: type[BaseModel], skip: Sequence[str] = ()) -> list[FieldOption]:
    schema = model.model_json_schema()
    return _fields(schema, schema.get("$defs", {}), model, skip)


def _type_option(cls: type[Strict]) -> TypeOption:
    layout: Sequence[str] | None = getattr(cls, "layout", None)
    return TypeOption(
        type=tag_of(cls),
        description=_text(cls.__doc__) or tag_of(cls),
        takes=list(layout) if layout else None,
        fields=_model_fields(cls),
    )


def _labels(loss: str) -> Literal["sparse", "binary", "one_hot"]:
    return "sparse" if loss in SPARSE_LOSSES else "binary" if loss in BINARY_LOSSES else "one_hot"


@functools.cache
def spec_options() -> SpecOptions:
    """The options of this version of the spec (they never change while the process runs)."""
    kinds = {section: [_type_option(cls) for cls in classes] for section, classes in KINDS.items()}
    return SpecOptions(
        layers=kinds["layers"],
        optimizers=kinds["optimizers"],
        schedules=kinds["schedules"],
        callbacks=kinds["callbacks"],
        activations=list(ACTIVATIONS),
        losses=[LossOption(name=loss, labels=_labels(loss)) for loss in LOSSES],
        metrics=list(METRICS),
        request=_model_fields(TrainRequest, skip=PARTS),
        model=_model_fields(ModelSpec),
        compile=_model_fields(CompileSpec),
        dataset=_model_fields(DatasetSpec),
        fit=_model_fields(FitSpec),
        resources=_model_fields(ResourcesSpec),
    )
