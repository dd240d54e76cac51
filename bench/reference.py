"""The baselines /predict is measured against, served by the same uvicorn as the service.

- ``POST /ceiling``: the fastest route the stack allows: a bare Starlette route that parses the same JSON body with
  orjson into NumPy and answers a fixed prediction of ten floats, no model call. Nothing on this stack that reads the
  body and answers can be faster, so it is the ceiling /predict is held to;
- ``POST /empty``: an empty FastAPI route that only parses the same JSON body with ``json.loads`` into NumPy;
- ``POST /naive``: the route people write first, ``model.predict`` on the stored model.

One uvicorn serves all three; a plain ASGI function sends ``/ceiling`` to the Starlette app and the rest to the
FastAPI one, so neither pays for the other.

Run as ``python -m bench.reference --port P --model FILE --rescale R``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.processes import baseline_arguments

FIXED_PREDICTION = orjson.dumps({"predictions": [[0.1] * 10]})


async def ceiling(request: StarletteRequest) -> Response:
    body = orjson.loads(await request.body())
    x = np.asarray(body["instances"], dtype=np.float32)
    if x.size == 0:
        return Response(b'{"error":"no instances"}', status_code=400, media_type="application/json")
    return Response(FIXED_PREDICTION, media_type="application/json")


def by_path(paths: dict[str, ASGIApp], default: ASGIApp) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await paths.get(scope.get("path", ""), default)(scope, receive, send)

    return app


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
    args = baseline_arguments()
    bare = Starlette(routes=[Route("/ceiling", ceiling, methods=["POST"])])
    app = by_path({"/ceiling": bare}, create_reference_app(args.model, args.rescale))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
