"""Seeing inside a trained model, as the book's chapter 8-3 does: a layer's weights (their statistics, histogram
and, for convolution kernels, one small image per filter) next to the same layer freshly initialised, and the
outputs of chosen layers for one input (convolution feature maps as images), from a sub-model that runs from the
model's input to those layers.

No HTTP here. The stored ``.keras`` file is loaded as Keras loads it (``keras.models.load_model``), integrity
checked first; the last few are kept loaded. Layers are named as the user named them (the summary's names), which
the record maps to the names inside the file.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from service.db import ModelRow
from service.spec import ModelSpec
from service.store import Store, model_key

FloatArray = npt.NDArray[np.float32]
# Images of a layer's output or weights are made for at most this many channels or filters.
MAX_IMAGES = 256


class InspectionError(Exception):
    """A request that names what the model does not have; ``loc`` is the field to blame."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


class Histogram(BaseModel):
    edges: list[float] = Field(description="bins + 1 edges, as np.histogram gives them.")
    counts: list[int]


class WeightStats(BaseModel):
    name: str = Field(description="kernel, bias, gamma, …, as Keras names the variable.")
    shape: list[int]
    mean: float
    std: float
    min: float
    max: float
    histogram: Histogram


def stats_of(name: str, values: npt.NDArray[Any], bins: int) -> WeightStats:
    """What the book computes of a kernel: its mean, standard deviation and histogram (``np.histogram``)."""
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    counts, edges = np.histogram(flat, bins=bins)
    return WeightStats(
        name=name,
        shape=[int(d) for d in values.shape],
        mean=float(flat.mean()),
        std=float(flat.std()),
        min=float(flat.min()),
        max=float(flat.max()),
        histogram=Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts]),
    )


def png(pixels: npt.NDArray[np.uint8]) -> str:
    """A grey image as a ``data:`` URL, for an ``<img>`` as it is."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def grey(values: npt.NDArray[Any], low: float, high: float) -> npt.NDArray[np.uint8]:
    """Values from ``low`` (black) to ``high`` (white), as ``imshow(vmin=low, vmax=high, cmap='gray')`` shows
    them; a flat image is mid-grey."""
    span = high - low
    if span <= 0:
        return np.full(values.shape, 128, dtype=np.uint8)
    scaled = np.clip((np.asarray(values, dtype=np.float64) - low) / span, 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.uint8)


class Image(BaseModel):
    index: int = Field(description="The filter or channel.")
    png: str = Field(description="A grey PNG as a data: URL.")


def kernel_images(kernel: npt.NDArray[Any], channel: int) -> tuple[list[Image], float]:
    """One image per filter of a convolution kernel (height, width, in, out) at one input channel, all on one
    symmetric scale (the book's ``vmin=-0.5, vmax=0.5``, here ± the largest magnitude): the scale and the images."""
    plane = kernel[:, :, channel, :]
    bound = float(np.abs(plane).max())
    return [
        Image(index=i, png=png(grey(plane[:, :, i], -bound, bound))) for i in range(min(plane.shape[-1], MAX_IMAGES))
    ], bound


def feature_map_images(output: npt.NDArray[Any]) -> list[Image]:
    """One image per channel of a convolution's output for one input (height, width, channels), each on its own
    scale, as ``imshow`` picks it."""
    return [
        Image(index=i, png=png(grey(output[:, :, i], float(output[:, :, i].min()), float(output[:, :, i].max()))))
        for i in range(min(output.shape[-1], MAX_IMAGES))
    ]


class LayerWeights(BaseModel):
    layer: str
    type: str = Field(description="The Keras class, e.g. Conv2D.")
    untrained: bool = Field(description="Whether these are a freshly initialised layer's, not the trained one's.")
    weights: list[WeightStats]
    images: list[Image] | None = Field(
        description="A convolution kernel: one image per filter at the chosen input channel (at most 256)."
    )
    image_scale: float | None = Field(
        description="The images' shared scale: black is -image_scale, white +image_scale."
    )


class LayerOutput(BaseModel):
    layer: str
    type: str
    shape: list[int] = Field(description="Of the one instance's output, without the batch dimension.")
    values: list[Any] = Field(description="The output itself, nested as its shape.")
    images: list[Image] | None = Field(
        description="A convolution's feature maps: one image per channel (at most 256), each on its own scale."
    )


class Activations(BaseModel):
    model_id: str
    outputs: list[LayerOutput]


class Inspector:
    """Keeps the last few loaded models; every call is blocking (Keras), for a thread."""

    def __init__(self, store: Store, keep: int = 2) -> None:
        self.store = store
        self.keep = keep
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def model(self, row: ModelRow) -> Any:
        from service.keras_build import load_stored_model

        with self._lock:
            if row.id in self._models:
                self._models.move_to_end(row.id)
                return self._models[row.id]
        loaded = load_stored_model(self.store.local(model_key(row.id), row.sha256, f"file of model {row.id}"))
        with self._lock:
            self._models[row.id] = loaded
            while len(self._models) > self.keep:
                self._models.popitem(last=False)
        return loaded

    def weights(
        self, row: ModelRow, layer_name: str, *, untrained: bool, bins: int, channel: int, seed: int | None
    ) -> LayerWeights:
        index = layer_index(row, layer_name, ("layer",))
        if untrained:
            from service.keras_build import build_seeded

            layer = build_seeded(ModelSpec.model_validate(row.spec["model"]), seed).layers[index]
        else:
            layer = self.model(row).layers[index]
        arrays = [(str(variable.name), np.asarray(variable.numpy())) for variable in layer.weights]
        stats = [stats_of(name, values, bins) for name, values in arrays]
        images: list[Image] | None = None
        scale: float | None = None
        kernel = next((values for name, values in arrays if name == "kernel" and values.ndim == 4), None)
        if kernel is not None:
            if not 0 <= channel < kernel.shape[2]:
                raise InspectionError(
                    f"the kernel has {kernel.shape[2]} input channels; channel must be 0 to {kernel.shape[2] - 1}",
                    ("channel",),
                )
            images, scale = kernel_images(kernel, channel)
        return LayerWeights(
            layer=layer_name,
            type=type(layer).__name__,
            untrained=untrained,
            weights=stats,
            images=images,
            image_scale=scale,
        )

    def activations(self, row: ModelRow, x: FloatArray, layer_names: Sequence[str]) -> list[LayerOutput]:
        """Each named layer's output for one instance ``x`` (shape (1, *input_shape), already as the model takes
        it: rescaled, texts as word indexes)."""
        import keras

        indexes = [layer_index(row, name, ("layers", i)) for i, name in enumerate(layer_names)]
        model = self.model(row)
        probe = keras.Model(inputs=model.inputs, outputs=[model.layers[i].output for i in indexes])
        outputs = probe.predict_on_batch(x)
        if len(indexes) == 1 and not isinstance(outputs, list | tuple):
            outputs = [outputs]
        answers = []
        for name, index, output in zip(layer_names, indexes, outputs, strict=True):
            one = np.asarray(output)[0]
            layer = model.layers[index]
            images = feature_map_images(one) if one.ndim == 3 and "Conv" in type(layer).__name__ else None
            answers.append(
                LayerOutput(
                    layer=name,
                    type=type(layer).__name__,
                    shape=[int(d) for d in one.shape],
                    values=one.tolist(),
                    images=images,
                )
            )
        return answers


# Bytes of the JSON answer per output value (a float32 as text, with its comma) and per image pixel (a PNG as base64
# is at most its raw pixels and a third), and around each layer's answer.
VALUE_BYTES = 16
PIXEL_BYTES = 2
LAYER_BYTES = 500


def answer_bytes(row: ModelRow, names: Sequence[str]) -> int:
    """About how large the answer of ``activations`` for these layers is, from the shapes the summary recorded;
    unknown names count nothing (they are refused)."""
    shapes = {str(layer["name"]): layer["output_shape"][1:] for layer in row.summary.get("layers", [])}
    total = 0
    for name in names:
        shape = [int(d or 1) for d in shapes.get(name, [])]
        values = math.prod(shape) if shape else 0
        total += LAYER_BYTES + values * VALUE_BYTES + (values * PIXEL_BYTES if len(shape) == 3 else 0)
    return total


def layer_names(row: ModelRow) -> list[str]:
    """The model's layers as the user named them (the summary's names)."""
    return [str(layer["name"]) for layer in row.summary.get("layers", [])]


def layer_index(row: ModelRow, name: str, loc: tuple[str | int, ...]) -> int:
    names = layer_names(row)
    if name not in names:
        raise InspectionError(f"the model has no layer {name!r}; its layers: {', '.join(names)}", loc)
    return names.index(name)
