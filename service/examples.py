"""The book's experiments as training requests, on `digits` (ships with scikit-learn), `fashion_mnist` and `imdb`.

The chapter: sigmoid vs relu hidden layers, then the relu model compiled with each optimizer it compares. The
chapters after it: dropout, a best-epoch checkpoint and early stopping (7-3), the CNN (8-2), and the RNNs on IMDB
reviews (9-2, 9-3). The same requests appear in /docs, GET /examples and as JSON files in `examples/`
(``python -m service.examples examples``).
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


# --- the chapters after it: callbacks (7-3), a CNN (8-2), RNNs on IMDB reviews (9-2, 9-3) -----------------------

_HELD_OUT: dict[str, Any] = {"size": 0.2, "random_state": 42}
_BEST: list[dict[str, Any]] = [
    {"type": "checkpoint", "monitor": "val_loss"},
    {"type": "early_stopping", "monitor": "val_loss", "patience": 2, "restore_best_weights": True},
]


def _dense_request(dataset: str, name: str, *, dropout: bool, callbacks: bool) -> dict[str, Any]:
    d = _DATASETS[dataset]
    layers: list[dict[str, Any]] = [{"type": "flatten"}, {"type": "dense", "units": 100, "activation": "relu"}]
    if dropout:
        layers.append({"type": "dropout", "rate": 0.3})
    layers.append({"type": "dense", "units": 10, "activation": "softmax"})
    return {
        "name": name,
        "model": {"input_shape": list(d["input_shape"]), "layers": layers},
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        "dataset": dict(d["dataset"]),
        "fit": {
            # As the book: 20 epochs with dropout alone, 100 for early stopping to end.
            "epochs": 100 if callbacks else 20,
            "batch_size": 32,
            "validation_data": dict(_HELD_OUT),
            "seed": 42,
            **({"callbacks": [dict(c) for c in _BEST]} if callbacks else {}),
        },
    }


def _cnn_request(dataset: str, name: str, side: int) -> dict[str, Any]:
    return {
        "name": name,
        "model": {
            "input_shape": [side, side, 1],
            "layers": [
                {"type": "conv2d", "filters": 32, "kernel_size": 3, "activation": "relu", "padding": "same"},
                {"type": "max_pooling2d", "pool_size": 2},
                {"type": "conv2d", "filters": 64, "kernel_size": [3, 3], "activation": "relu", "padding": "same"},
                {"type": "max_pooling2d", "pool_size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 100, "activation": "relu"},
                {"type": "dropout", "rate": 0.4},
                {"type": "dense", "units": 10, "activation": "softmax"},
            ],
        },
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]},
        "dataset": {**_DATASETS[dataset]["dataset"], "reshape": [side, side, 1]},
        "fit": {
            "epochs": 20,
            "batch_size": 32,
            "validation_data": dict(_HELD_OUT),
            "seed": 42,
            "callbacks": [dict(c) for c in _BEST],
        },
    }


def _rnn_request(name: str, layers: list[dict[str, Any]], *, one_hot: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "model": {
            "input_shape": [100, 500] if one_hot else [100],
            "layers": [*layers, {"type": "dense", "units": 1, "activation": "sigmoid"}],
        },
        "compile": {
            "optimizer": {"type": "rmsprop", "learning_rate": 1e-4},
            "loss": "binary_crossentropy",
            "metrics": ["accuracy"],
        },
        "dataset": {"name": "imdb", "num_words": 500, "maxlen": 100, **({"one_hot": True} if one_hot else {})},
        "fit": {
            "epochs": 100,
            "batch_size": 64,
            "validation_data": dict(_HELD_OUT),
            "seed": 42,
            "callbacks": [
                {"type": "checkpoint", "monitor": "val_loss"},
                {"type": "early_stopping", "monitor": "val_loss", "patience": 3, "restore_best_weights": True},
            ],
        },
    }


_EMBEDDING = {"type": "embedding", "input_dim": 500, "output_dim": 16}


def book_examples() -> dict[str, dict[str, Any]]:
    """The training cells of the notebooks that follow the chapter (7-3, 8-2, 9-2, 9-3), file stem → request."""
    examples: dict[str, dict[str, Any]] = {}
    for dataset in _DATASETS:
        examples[f"{dataset}_7_3_dropout"] = _dense_request(
            dataset, f"{dataset} 7-3 dropout", dropout=True, callbacks=False
        )
        examples[f"{dataset}_7_3_early_stopping"] = _dense_request(
            dataset, f"{dataset} 7-3 dropout + checkpoint + early stopping", dropout=True, callbacks=True
        )
    examples["digits_8_2_cnn"] = _cnn_request("digits", "digits 8-2 cnn", 8)
    examples["fashion_mnist_8_2_cnn"] = _cnn_request("fashion_mnist", "fashion_mnist 8-2 cnn", 28)
    examples["imdb_9_2_simple_rnn_one_hot"] = _rnn_request(
        "imdb 9-2 simple rnn, one-hot", [{"type": "simple_rnn", "units": 8}], one_hot=True
    )
    examples["imdb_9_2_embedding_simple_rnn"] = _rnn_request(
        "imdb 9-2 embedding + simple rnn", [dict(_EMBEDDING), {"type": "simple_rnn", "units": 8}]
    )
    examples["imdb_9_3_lstm"] = _rnn_request("imdb 9-3 lstm", [dict(_EMBEDDING), {"type": "lstm", "units": 8}])
    examples["imdb_9_3_lstm_dropout"] = _rnn_request(
        "imdb 9-3 lstm + dropout", [dict(_EMBEDDING), {"type": "lstm", "units": 8, "dropout": 0.3}]
    )
    examples["imdb_9_3_stacked_lstm"] = _rnn_request(
        "imdb 9-3 two lstm layers",
        [
            dict(_EMBEDDING),
            {"type": "lstm", "units": 8, "dropout": 0.3, "return_sequences": True},
            {"type": "lstm", "units": 8, "dropout": 0.3},
        ],
    )
    examples["imdb_9_3_gru"] = _rnn_request("imdb 9-3 gru", [dict(_EMBEDDING), {"type": "gru", "units": 8}])
    return examples


def all_examples() -> dict[str, dict[str, Any]]:
    return {**chapter_examples(), **book_examples()}


def openapi_examples() -> dict[str, dict[str, Any]]:
    """The digits examples (which train anywhere, offline) for the /docs page, relu + adam first."""
    examples = chapter_examples()
    order = ["digits_relu_adam"] + [k for k in examples if k.startswith("digits") and k != "digits_relu_adam"]
    return {key: {"summary": examples[key]["name"], "value": examples[key]} for key in order}


# --- the chapter's comparisons as experiments ---------------------------------------------------------------------


def _base(request: dict[str, Any]) -> dict[str, Any]:
    """A chapter request as an experiment's base: its trials are named after the experiment."""
    return {key: value for key, value in request.items() if key != "name"}


def experiment_examples() -> dict[str, dict[str, Any]]:
    """File stem → experiment request: the chapter's six optimizers and its two activations on digits, each one
    grid search; and a learning-rate search with a pruner."""
    chapter = chapter_examples()
    return {
        "experiment_optimizers": {
            "name": "digits: the chapter's six optimizers",
            "base": _base(chapter["digits_relu_adam"]),
            "space": {"compile.optimizer": {"type": "choice", "values": list(_OPTIMIZERS.values())}},
            "search": {"type": "grid", "seed": 42},
            "objective": {"metric": "accuracy", "direction": "max", "source": "evaluation"},
            "max_parallel": 2,
        },
        "experiment_activation": {
            "name": "digits: sigmoid or relu",
            "base": _base(chapter["digits_relu"]),
            "space": {"model.layers[1].activation": {"type": "choice", "values": ["sigmoid", "relu"]}},
            "search": {"type": "grid"},
            "objective": {"metric": "accuracy", "direction": "max", "source": "evaluation"},
            "max_parallel": 2,
        },
        "experiment_learning_rate": {
            "name": "digits: adam's learning rate",
            "base": _base(chapter["digits_relu_adam"]),
            "space": {"compile.optimizer.learning_rate": {"type": "float", "low": 1e-5, "high": 0.1, "log": True}},
            "search": {"type": "tpe", "seed": 42},
            "objective": {"metric": "accuracy", "direction": "max", "source": "evaluation"},
            "max_trials": 12,
            "max_parallel": 2,
            "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 2},
            # Adam's own default first: the trials after it are measured against a known baseline.
            "enqueue": [{"compile.optimizer.learning_rate": 0.001}],
        },
    }


def experiment_openapi_examples() -> dict[str, dict[str, Any]]:
    return {key: {"summary": body["name"], "value": body} for key, body in experiment_examples().items()}


def write_examples(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, request in {**all_examples(), **experiment_examples()}.items():
        path = directory / f"{stem}.json"
        path.write_text(json.dumps(request, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "examples")):
        print(written_path)
