"""Built-in datasets: what each one is (known without loading it) and how the worker loads it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: Literal["scikit-learn", "keras", "upload"]
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] | None
    description: str
    # Samples in every split together: what a job's arrays are sized by.
    rows: int
    # keras.datasets files under Keras' cache directory; empty for datasets shipped inside a package.
    cache_files: tuple[str, ...] = field(default=())
    # Samples of the dataset's own test split, if it has one.
    test_rows: int = 0
    # A text dataset's ``TextEncoding`` as JSON: what a model trained on it needs to take raw text.
    text: dict[str, Any] | None = None
    # Word-index sequences: how many words their indexes count (what one-hot vectors of them are as wide as).
    vocabulary_size: int | None = None
    # The samples' shape as stored, when the request reshapes them (input_shape is then the reshaped one).
    stored_shape: tuple[int, ...] | None = None


BUILTIN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("digits", "scikit-learn", (8, 8), 10, None, "1,797 handwritten digits as 8×8 images, 0–16.", 1797),
        DatasetInfo(
            "iris",
            "scikit-learn",
            (4,),
            3,
            ("setosa", "versicolor", "virginica"),
            "150 irises, 4 measurements.",
            150,
        ),
        DatasetInfo(
            "wine",
            "scikit-learn",
            (13,),
            3,
            ("class_0", "class_1", "class_2"),
            "178 wines, 13 chemical features.",
            178,
        ),
        DatasetInfo(
            "breast_cancer",
            "scikit-learn",
            (30,),
            2,
            ("malignant", "benign"),
            "569 tumours, 30 features.",
            569,
        ),
        DatasetInfo(
            "mnist",
            "keras",
            (28, 28),
            10,
            None,
            "70,000 handwritten digits as 28×28 images, 0–255.",
            70_000,
            ("datasets/mnist.npz",),
            10_000,
        ),
        DatasetInfo(
            "fashion_mnist",
            "keras",
            (28, 28),
            10,
            FASHION_MNIST_CLASSES,
            "70,000 clothing images as 28×28 grey levels, 0–255.",
            70_000,
            tuple(
                f"datasets/fashion-mnist/{f}"
                for f in (
                    "train-labels-idx1-ubyte.gz",
                    "train-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                )
            ),
            10_000,
        ),
        DatasetInfo(
            "cifar10",
            "keras",
            (32, 32, 3),
            10,
            CIFAR10_CLASSES,
            "60,000 colour images as 32×32×3, 0–255.",
            60_000,
            ("datasets/cifar-10-batches-py",),
            10_000,
        ),
        DatasetInfo(
            "imdb",
            "keras",
            (),  # (maxlen,): each request says how long its reviews are
            2,
            ("negative", "positive"),
            "50,000 film reviews as word indexes (1 starts a review, 2 is out of vocabulary), negative or positive.",
            50_000,
            ("datasets/imdb.npz",),
            25_000,
        ),
    )
}

# Built-ins of word-index sequences, whose length each request chooses (dataset.maxlen).
SEQUENCE_DATASETS = frozenset({"imdb"})


@dataclass(frozen=True)
class Sequences:
    """How a sequence dataset is cut: ``load_data(num_words=...)``, then ``pad_sequences``."""

    num_words: int | None
    maxlen: int
    padding: Literal["pre", "post"] = "pre"
    truncating: Literal["pre", "post"] = "pre"


FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
NumberArray = npt.NDArray[np.float32] | npt.NDArray[np.uint8] | npt.NDArray[np.int32]


class DatasetUnavailableError(Exception):
    """The dataset cannot be loaded here (not cached and not downloadable)."""


@dataclass
class LoadedDataset:
    """Inputs as numbers (float32, or the dataset's own uint8 pixels), labels as integer class numbers."""

    x_train: NumberArray
    y_train: IntArray
    x_test: NumberArray | None
    y_test: IntArray | None


def keras_home(cache: Path | None) -> Path:
    """Keras' cache directory: the setting, else KERAS_HOME, else ~/.keras (as Keras itself decides)."""
    if cache is not None:
        return cache
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def is_available_offline(info: DatasetInfo, cache: Path | None) -> bool:
    home = keras_home(cache)
    return all((home / f).exists() for f in info.cache_files)


def load_builtin(info: DatasetInfo, sequences: Sequences | None = None) -> LoadedDataset:
    """Load a built-in dataset: float32 inputs (keras.datasets: their uint8 pixels) and integer class labels.

    scikit-learn's datasets come without a test split; keras.datasets come with theirs.
    """
    if info.source == "scikit-learn":
        from sklearn import datasets as skd

        loaders = {
            "digits": skd.load_digits,
            "iris": skd.load_iris,
            "wine": skd.load_wine,
            "breast_cancer": skd.load_breast_cancer,
        }
        bunch = loaders[info.name]()
        x = bunch.images if info.name == "digits" else bunch.data
        return LoadedDataset(x.astype(np.float32), bunch.target.astype(np.int64), None, None)

    # Keras reads KERAS_HOME when it is imported; the worker sets it from the settings before that.
    from keras import datasets as kd

    module = {"mnist": kd.mnist, "fashion_mnist": kd.fashion_mnist, "cifar10": kd.cifar10, "imdb": kd.imdb}[info.name]
    try:
        if info.name in SEQUENCE_DATASETS:
            assert sequences is not None  # the request's dataset.maxlen, required for these
            (x_train, y_train), (x_test, y_test) = module.load_data(num_words=sequences.num_words)
        else:
            (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as exc:
        raise DatasetUnavailableError(
            f"dataset {info.name!r} is not in the Keras cache ({keras_home(None) / 'datasets'}) "
            f"and could not be downloaded: {exc}"
        ) from exc
    if sequences is not None:
        from keras.utils import pad_sequences

        def cut(x: Any) -> NumberArray:
            padded: NumberArray = pad_sequences(
                x, maxlen=sequences.maxlen, padding=sequences.padding, truncating=sequences.truncating
            )
            return padded

        x_train, x_test = cut(x_train), cut(x_test)
    # The pixels stay uint8 (a quarter of the memory); the job makes float32 of them once, with its rescale.
    return LoadedDataset(x_train, y_train.reshape(-1).astype(np.int64), x_test, y_test.reshape(-1).astype(np.int64))
