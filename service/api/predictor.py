"""Loaded models for prediction: an LRU of Keras models read from the store and checked against their sha256."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from service.store import verified_path


class ModelCache:
    """Loads each model once (concurrent first requests wait for one load) and keeps the most recent ones."""

    def __init__(self, store: Path, capacity: int) -> None:
        self.store = store
        self.capacity = capacity
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, model_id: str, sha256: str) -> Any:
        with self._lock:
            model = self._models.get(model_id)
            if model is not None:
                self._models.move_to_end(model_id)
                return model
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            with self._lock:
                model = self._models.get(model_id)
            if model is None:
                model = self._load(model_id, sha256)
                with self._lock:
                    self._models[model_id] = model
                    while len(self._models) > self.capacity:
                        self._models.popitem(last=False)
            with self._lock:
                self._loading.pop(model_id, None)
        return model

    def _load(self, model_id: str, sha256: str) -> Any:
        import keras

        path = verified_path(self.store, model_id, sha256)
        return keras.models.load_model(path, compile=False, safe_mode=True)


def predict(model: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(model.predict_on_batch(x), dtype=np.float32)
