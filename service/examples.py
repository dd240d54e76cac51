"""The chapter's experiments as training requests, on `digits` (ships with scikit-learn) and `fashion_mnist`.

Sigmoid vs relu hidden layers, then the relu model compiled with each optimizer the chapter compares. The same
requests appear in /docs and as JSON files in `examples/` (``python -m service.examples examples``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

_DATASETS: dict[str, dict[str, Any]] = {
    "digits": {
        "model_name": "손글씨 숫자 모델",
        "input_shape": [8, 8],
        "dataset": {"name": "digits", "rescale": 1 / 16, "test_size": 0.2, "random_state": 42},
        "epochs": 20,
    },
    "fashion_mnist": {
        "model_name": "패션 MNIST 모델",
        "input_shape": [28, 28],
        "dataset": {"name": "fashion_mnist", "rescale": 1 / 255},
        "epochs": 5,
    },
}

# Keras' compile() defaults to rmsprop, which is what the chapter's first two models train with.
_OPTIMIZERS: dict[str, Any] = {
    "sgd": "sgd",
    "momentum": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.9},
    "nesterov": {"type": "sgd", "learning_rate": 0.01, "momentum": 0.9, "nesterov": True},
    "adagrad": "adagrad",
    "rmsprop": "rmsprop",
    "adam": "adam",
}


def _request(dataset: str, activation: str, optimizer: Any, label: str) -> dict[str, Any]:
    d = _DATASETS[dataset]
    return {
        "name": f"{dataset} {label}",
        "model": {
            "name": d["model_name"],
            "input_shape": list(d["input_shape"]),
            "layers": [
                {"type": "flatten"},
                {"type": "dense", "units": 100, "activation": activation, "name": "hidden"},
                {"type": "dense", "units": 10, "activation": "softmax", "name": "output"},
            ],
        },
        "compile": {
            "optimizer": optimizer,
            "loss": "sparse_categorical_crossentropy",
            "metrics": ["accuracy"],
        },
        "dataset": dict(d["dataset"]),
        "fit": {"epochs": d["epochs"], "batch_size": 32, "validation_split": 0.2, "seed": 42},
    }


def chapter_examples() -> dict[str, dict[str, Any]]:
    """File stem → request, e.g. ``digits_relu_adam``."""
    examples: dict[str, dict[str, Any]] = {}
    for dataset in _DATASETS:
        examples[f"{dataset}_sigmoid"] = _request(dataset, "sigmoid", "rmsprop", "sigmoid hidden layer")
        examples[f"{dataset}_relu"] = _request(dataset, "relu", "rmsprop", "relu hidden layer")
        for label, optimizer in _OPTIMIZERS.items():
            examples[f"{dataset}_relu_{label}"] = _request(dataset, "relu", optimizer, f"relu + {label}")
    return examples


def openapi_examples() -> dict[str, dict[str, Any]]:
    """The digits examples (which train anywhere, offline) for the /docs page, relu + adam first."""
    examples = chapter_examples()
    order = ["digits_relu_adam"] + [k for k in examples if k.startswith("digits") and k != "digits_relu_adam"]
    return {key: {"summary": examples[key]["name"], "value": examples[key]} for key in order}


def write_examples(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, request in chapter_examples().items():
        path = directory / f"{stem}.json"
        path.write_text(json.dumps(request, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "examples")):
        print(written_path)
