"""Real dataset files for the tests: .npz written by NumPy, .csv by the csv module, PNGs by Pillow in a .zip."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

# Three colours a tiny model tells apart at once: each image is mostly one channel, over noise.
COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def png_bytes(pixels: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_image(colour: str, size: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    noise = rng.integers(-25, 25, size=(size, size, 3))
    return np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)


def images_zip(
    per_class: int = 12, size: int = 12, classes: Sequence[str] = tuple(COLOURS), prefix: str = "", seed: int = 0
) -> bytes:
    """``{prefix}{class}/{i}.png`` for each class: a folder of images per class, as a user would zip them."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for colour in classes:
            zf.writestr(f"{prefix}{colour}/", b"")
            for i in range(per_class):
                zf.writestr(f"{prefix}{colour}/{i:03d}.png", png_bytes(colour_image(colour, size, rng)))
    return buffer.getvalue()


def blobs(rows: int, features: int = 4, classes: int = 3, seed: int = 0) -> tuple[np.ndarray[Any, Any], ...]:
    """Separable clusters: class k centred at 3k on every feature."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % classes
    x = rng.normal(size=(rows, features)) + 3.0 * y[:, None]
    return x.astype(np.float32), y.astype(np.int64)


def upload(client: TestClient, filename: str, content: bytes, **fields: str) -> tuple[int, dict[str, Any]]:
    response = client.post("/datasets", files={"file": (filename, content)}, data=fields)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def stored_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []
