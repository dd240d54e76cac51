"""The dashboard: ``/`` is its page, ``/dashboard/<file>`` its scripts, styles and the vendored Chart.js.

The files ship inside the ``service.dashboard`` package and are served as they are (no build step). Only the files
found there at start-up can be asked for, so no request path reaches the file system. They hold no data: with API
keys configured they load without one (see ``PUBLIC_PREFIXES`` in the middleware), and the page sends the key the
user types to the API itself.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from service.api.errors import not_found

router = APIRouter(include_in_schema=False)

ROOT = Path(__file__).resolve().parent.parent.parent / "dashboard"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
}
# Revalidate every time (cheap, with the ETag): a new version of the service shows its new dashboard at once.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _files(root: Path) -> dict[str, Path]:
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


FILES = _files(ROOT)


def _serve(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise not_found("dashboard file", name)
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
def index(request: Request) -> Response:
    """The dashboard for a browser; for any other client, KServe's v1 liveness answer (its SDK asks `/`)."""
    if "text/html" not in request.headers.get("accept", ""):
        return JSONResponse({"status": "alive"}, headers={"Vary": "Accept"})
    response = _serve("index.html")
    response.headers["Vary"] = "Accept"
    return response


@router.api_route("/dashboard/{name:path}", methods=["GET", "HEAD"])
def asset(name: str) -> FileResponse:
    return _serve(name)
