"""Response bodies of the dataset endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.datasets.builtin import DatasetInfo, is_available_offline
from service.datasets.catalogue import BuiltinOverview
from service.db import DatasetRow


class DatasetStats(BaseModel):
    min: float
    max: float
    mean: float
    std: float


class TextRead(BaseModel):
    num_words: int = Field(description="Vocabulary size, padding (0) and [UNK] (1) included.")
    maxlen: int
    padding: Literal["pre", "post"]
    truncating: Literal["pre", "post"]
    standardize: str = Field(description="TextVectorization's standardize, as the texts were read.")
    split: str
    top_words: list[str] = Field(description="The most frequent words, from index 2 on (at most 50).")

    @classmethod
    def from_json(cls, text: dict[str, Any]) -> TextRead:
        vocabulary = text["vocabulary"]
        return cls(
            num_words=len(vocabulary),
            maxlen=text["maxlen"],
            padding=text["padding"],
            truncating=text["truncating"],
            standardize=text["standardize"],
            split=text["split"],
            top_words=vocabulary[2:52],
        )


class DatasetRead(BaseModel):
    dataset_id: str = Field(description="An upload's id, or a built-in dataset's name; use it in POST /train.")
    name: str
    source: Literal["upload", "scikit-learn", "keras"]
    kind: Literal["npz", "csv", "images"] | None = Field(description="What was uploaded; null for built-ins.")
    filename: str | None
    x_shape: list[int] | None = Field(
        description="Inputs of the training split: (rows, *one sample). Null where the API has not loaded it."
    )
    y_shape: list[int] | None
    input_shape: list[int] = Field(
        description="One sample: the model's input_shape; empty for imdb, whose request says (maxlen,)."
    )
    dtype: Literal["float32", "uint8", "int32"] = Field(
        default="float32",
        description="Inputs as stored: uint8 for image pixels (and uint8 arrays as uploaded), int32 for the word "
        "indexes of texts, else float32. Jobs train on float32, after their rescale.",
    )
    text: TextRead | None = Field(
        default=None, description="A .csv of texts: how its texts became sequences, and its most frequent words."
    )
    num_classes: int = Field(description="Units of a softmax output layer.")
    class_names: list[str] | None
    class_counts: list[int] | None = Field(description="Samples per class, over every split.")
    splits: dict[str, int] | None = Field(description="Rows per split, e.g. {'train': 900, 'test': 100}.")
    sha256: str | None = Field(description="Of the uploaded file: the same bytes give the same dataset.")
    options: dict[str, Any] | None = Field(description="How the file was read (label_column, image_size, …).")
    stats: DatasetStats | None = Field(description="min, max, mean, std of the training inputs, in their units.")
    available_offline: bool = Field(
        description="Whether a worker can load it without downloading (uploads always; keras.datasets when in "
        "Keras' cache)."
    )
    description: str
    size_bytes: int | None = Field(description="Of the stored, normalised .npz file.")
    created_at: datetime | None

    @classmethod
    def from_row(cls, row: DatasetRow) -> DatasetRead:
        return cls(
            dataset_id=row.id,
            name=row.name,
            source="upload",
            kind=row.kind,
            filename=row.filename,
            x_shape=row.x_shape,
            y_shape=row.y_shape,
            input_shape=row.x_shape[1:],
            num_classes=row.num_classes,
            class_names=row.class_names,
            class_counts=row.class_counts,
            splits=row.splits,
            sha256=row.sha256,
            options=row.options,
            dtype=row.stats.get("dtype") if row.stats.get("dtype") in ("uint8", "int32") else "float32",
            text=None if row.text is None else TextRead.from_json(row.text),
            stats=DatasetStats.model_validate(row.stats),
            available_offline=True,
            description=f"uploaded from {row.filename!r}",
            size_bytes=row.size_bytes,
            created_at=row.created_at,
        )

    @classmethod
    def from_builtin(cls, info: DatasetInfo, keras_cache: Any, overview: BuiltinOverview | None) -> DatasetRead:
        return cls(
            dataset_id=info.name,
            name=info.name,
            source=info.source,
            kind=None,
            filename=None,
            x_shape=overview.x_shape if overview else None,
            y_shape=overview.y_shape if overview else None,
            input_shape=list(info.input_shape),
            num_classes=info.num_classes,
            class_names=list(info.class_names) if info.class_names else None,
            class_counts=overview.class_counts if overview else None,
            splits=overview.splits if overview else None,
            sha256=None,
            options=None,
            dtype="uint8" if info.source == "keras" else "float32",
            stats=DatasetStats.model_validate(overview.stats) if overview else None,
            available_offline=is_available_offline(info, keras_cache),
            description=info.description,
            size_bytes=None,
            created_at=None,
        )


class DatasetList(BaseModel):
    data: list[DatasetRead]
    count: int = Field(description="Datasets over all pages: the built-in ones, then uploads newest first.")


class DatasetSample(BaseModel):
    index: int = Field(description="Row in the split.")
    x: list[Any] | None = Field(description="The inputs, as numbers in the dataset's units (null with values=false).")
    y: int = Field(description="The class number.")
    label: str | None = Field(description="The class name, when the dataset has them.")
    image: str | None = Field(default=None, description="Image datasets: the sample as a PNG data URL.")


class DatasetSamples(BaseModel):
    dataset_id: str
    split: Literal["train", "test"]
    rows: int = Field(description="Rows in the split.")
    samples: list[DatasetSample]
