"""The baselines /predict is measured against, served by the same uvicorn as the service.

- ``POST /empty``: an empty FastAPI route that only parses the same JSON body with ``json.loads`` into NumPy;
- ``POST /naive``: the route people write first, ``model.predict`` on the stored model.

Run as ``python -m bench.reference --port P --model FILE --rescale R``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse


def create_reference_app(model_path: Path, rescale: float) -> FastAPI:
    import keras

    model = keras.models.load_model(model_path, compile=False)
    app = FastAPI()

    @app.post("/empty")
    async def empty(request: Request) -> JSONResponse:
        body = json.loads(await request.body())
        x = np.asarray(body["instances"], dtype=np.float32)
        return JSONResponse({"instances": len(x)})

    @app.post("/naive")
    def naive(body: dict[str, Any] = Body()) -> dict[str, Any]:  # noqa: B008 (FastAPI's way to declare a body)
        x = np.asarray(body["instances"], dtype=np.float32) * np.float32(rescale)
        return {"predictions": model.predict(x, verbose=0).tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rescale", type=float, required=True)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    uvicorn.run(create_reference_app(args.model, args.rescale), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
