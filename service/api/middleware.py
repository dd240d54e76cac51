"""Request-level guards: API keys and the request body limit. Pure ASGI, so they cover every route."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import ErrorBody, ErrorResponse

# Reachable without a key: liveness, readiness and the API's own documentation.
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/v2/health/live",
        "/v2/health/ready",
        "/",  # the dashboard page; it holds no data and asks for a key to call the API with
    }
)
# The dashboard's scripts and styles, public like its page.
PUBLIC_PREFIXES = ("/dashboard/",)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class ApiKey:
    secret: bytes
    read_only: bool


def parse_api_keys(text: str) -> list[ApiKey]:
    """``KEY`` has full access, ``KEY:read`` may read and predict only."""
    keys = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        secret, _, scope = entry.partition(":")
        keys.append(ApiKey(secret.encode(), read_only=scope.strip().lower() == "read"))
    return keys


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def is_prediction(path: str) -> bool:
    return path == "/predict" or path.endswith(":predict") or path.endswith("/infer")


async def _reply(send: Send, status: int, type: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = ErrorResponse(error=ErrorBody(type=type, message=message)).model_dump_json().encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """With keys configured, every request but the public paths needs ``Authorization: Bearer KEY``.

    401: no key, or one this service does not know. 403: a known read-only key asked to change something.
    The key is compared in constant time and never logged.
    """

    def __init__(self, app: ASGIApp, keys: list[ApiKey]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            await _reply(
                send,
                401,
                "unauthorized",
                "this endpoint needs an API key: Authorization: Bearer <key>",
                {"WWW-Authenticate": 'Bearer realm="trainserve"'},
            )
            return
        key = self._match(token.strip())
        if key is None:
            await _reply(
                send,
                401,
                "unauthorized",
                "the API key is not valid",
                {"WWW-Authenticate": 'Bearer realm="trainserve", error="invalid_token"'},
            )
            return
        if key.read_only and scope["method"] not in READ_METHODS and not is_prediction(scope["path"]):
            await _reply(send, 403, "forbidden", "this API key may read and predict, not change anything")
            return
        await self.app(scope, receive, send)

    def _match(self, token: bytes) -> ApiKey | None:
        found = None
        for key in self.keys:  # every key is compared, so the time taken does not tell which one matched
            if hmac.compare_digest(key.secret, token):
                found = key
        return found


class BodyLimitMiddleware:
    """413 for a body over the limit: at once from Content-Length, else (chunked) as soon as the stream passes it.
    Multipart uploads are left to the upload endpoint, which has its own limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        message = (
            f"the request body is larger than {self.max_bytes} bytes, this service's limit "
            f"(TRAINSERVE_MAX_REQUEST_BYTES)"
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():
            if int(length) > self.max_bytes:
                await _reply(send, 413, "payload_too_large", message)
                return
            # The server reads exactly Content-Length bytes: nothing more can arrive to count.
            await self.app(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing to the API's error handler.
                    raise HTTPException(413, message)
            return event

        async def tracking_send(event: Message) -> None:
            nonlocal started
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await _reply(send, 413, "payload_too_large", message)
