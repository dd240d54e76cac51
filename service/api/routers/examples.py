"""GET /examples: the chapter's experiments as ready-to-send training requests."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.examples import all_examples

router = APIRouter(prefix="/examples", tags=["examples"])


class Example(BaseModel):
    key: str = Field(description="The example's name, also its file stem in examples/.", examples=["digits_relu_adam"])
    name: str = Field(description="The job name the request gives.", examples=["digits relu + adam"])
    request: dict[str, Any] = Field(description="A body for POST /train.")


class ExampleList(BaseModel):
    data: list[Example]
    count: int


@router.get("", response_model=ExampleList)
def list_examples() -> ExampleList:
    """The book's experiments as POST /train bodies: a sigmoid and a relu hidden layer, then the relu model with
    each optimizer the chapter compares (SGD, momentum, Nesterov, Adagrad, RMSprop, Adam), on `digits` and
    `fashion_mnist`; then dropout with a checkpoint and early stopping (7-3), the CNN (8-2) and the RNNs on IMDB
    reviews (9-2, 9-3)."""
    examples = [Example(key=key, name=body["name"], request=body) for key, body in all_examples().items()]
    return ExampleList(data=examples, count=len(examples))
