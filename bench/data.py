"""A Fashion-MNIST-sized dataset in Keras' cache layout, generated here so the benchmark runs offline."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_fashion_mnist(keras_home: Path, train: int = 60_000, test: int = 10_000, seed: int = 0) -> None:
    """60,000 + 10,000 28×28 images as gzip'd IDX files where keras.datasets.fashion_mnist looks for them.

    Class k is a bright band at rows 2k+4..2k+7 over noise: the real dataset's size and shapes, learnable."""
    rng = np.random.default_rng(seed)
    folder = keras_home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 120, size=(count, 28, 28), dtype=np.uint8)
        for label in range(10):
            images[labels == label, 2 * label + 4 : 2 * label + 8, :] += 100
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(b"\x00\x00\x08\x01" + count.to_bytes(4, "big") + labels.tobytes())
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
            header = b"\x00\x00\x08\x03" + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
            f.write(header + images.tobytes())
