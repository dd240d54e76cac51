"""The answer of GET /spec/options: the spec's options (``service.spec.options``), the datasets a job can use and the
limits this service sets."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from service.datasets.catalogue import MAX_UPLOAD_CHOICES, DatasetChoice
from service.settings import Settings
from service.spec.options import SpecOptions


class DatasetOption(BaseModel):
    dataset: dict[str, str] = Field(
        description="What a request's `dataset` names it by: {'name': 'digits'} for a built-in, {'id': …} for an "
        "upload.",
        examples=[{"name": "digits"}],
    )
    name: str
    source: Literal["upload", "scikit-learn", "keras"]
    description: str
    input_shape: list[int] = Field(
        description="One sample's shape, the model's input_shape (before a request's reshape or one_hot); empty for "
        "word-index sequences, whose request gives their length (maxlen)."
    )
    sequences: bool = Field(description="Word-index sequences cut to the length a request gives (dataset.maxlen).")
    num_classes: int = Field(description="Units of a softmax output layer.")
    class_names: list[str] | None
    rows: int = Field(description="Samples in every split together.")
    test_rows: int = Field(description="Samples of its own test split; 0 without one (hold some out with test_size).")
    vocabulary_size: int | None = Field(
        description="Uploaded texts: how many words their indexes count (an embedding's input_dim, one_hot's width)."
    )
    value_range: list[float] | None = Field(
        description="The inputs' smallest and largest values where known without loading them (scikit-learn's and "
        "uploads' statistics, 0–255 for keras.datasets' images), before a request's rescale."
    )
    available_offline: bool = Field(
        description="Whether a worker can load it without downloading (uploads always; keras.datasets when in "
        "Keras' cache)."
    )

    @classmethod
    def from_choice(cls, choice: DatasetChoice) -> DatasetOption:
        info = choice.info
        return cls(
            dataset=choice.reference,
            name=info.name,
            source=info.source,
            description=info.description,
            input_shape=list(info.input_shape),
            sequences=choice.sequences,
            num_classes=info.num_classes,
            class_names=list(info.class_names) if info.class_names else None,
            rows=info.rows,
            test_rows=info.test_rows,
            vocabulary_size=info.vocabulary_size,
            value_range=list(choice.value_range) if choice.value_range else None,
            available_offline=choice.available_offline,
        )


class Limits(BaseModel):
    """What this service allows a request, beyond what the spec's own bounds say (its settings)."""

    max_layers: int = Field(description="Layers per model (TRAINSERVE_MAX_LAYERS).")
    max_epochs: int = Field(description="Epochs per job (TRAINSERVE_MAX_EPOCHS).")
    max_model_params: int = Field(description="Parameters per model (TRAINSERVE_MAX_MODEL_PARAMS).")

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_layers=settings.max_layers, max_epochs=settings.max_epochs, max_model_params=settings.max_model_params
        )


class Options(SpecOptions):
    """What a training request can choose from: the spec's parts with their fields, the datasets, the limits."""

    datasets: list[DatasetOption] = Field(
        description=f"The built-in datasets, then the newest {MAX_UPLOAD_CHOICES} uploads (GET /datasets lists all)."
    )
    uploads: int = Field(description="Uploaded datasets in all.")
    limits: Limits
