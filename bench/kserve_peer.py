"""The peer a Kubernetes user would pick: KServe's Python model server with the same ``.keras`` file.

A custom ``kserve.Model`` as KServe's documentation writes one, made as fast as its Python side allows: the model
traced once into a ``tf.function`` (faster than ``predict_on_batch``, which re-enters Keras' training machinery per
call), the dataset's rescale applied before it, KServe's v1 protocol (``POST /v1/models/{name}:predict`` with
``{"instances": …}``, the body the other routes take). One server process (``workers=1``), gRPC and per-request
latency logging off.

Run as ``python -m bench.kserve_peer --port P --model FILE --rescale R`` (``kserve`` comes with the test extra).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import kserve
import numpy as np

from bench.processes import baseline_arguments
from service.embedded import free_port

NAME = "fashion"


class KerasModel(kserve.Model):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self, name: str, path: Path, rescale: float) -> None:
        super().__init__(name)
        self.path = path
        self.rescale = np.float32(rescale)
        self.call: Any = None
        self.load()

    def load(self) -> bool:
        import keras
        import tensorflow as tf

        model = keras.models.load_model(self.path, compile=False)
        signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)]
        self.call = tf.function(lambda x: model(x, training=False), input_signature=signature)
        self.call(np.zeros((1, *model.input_shape[1:]), np.float32))
        self.ready = True
        return True

    def predict(
        self, payload: dict[str, Any], headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> dict[str, Any]:
        x = np.asarray(payload["instances"], dtype=np.float32) * self.rescale
        return {"predictions": self.call(x).numpy().tolist()}


def main() -> None:
    args = baseline_arguments()
    # KServe's own logging set-up, then quiet: no access or trace line per request, as for the other servers.
    kserve.logging.configure_logging()
    for name in ("uvicorn.access", "kserve.trace", "kserve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    model = KerasModel(NAME, args.model, args.rescale)
    server = kserve.ModelServer(
        http_port=args.port,
        grpc_port=free_port(),
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,
    )
    server.start([model])


if __name__ == "__main__":
    main()
