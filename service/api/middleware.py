"""Request-level guards, pure ASGI so they cover every route: API keys, and what a request body may cost.

Refusals are answered in the protocol of the path (``errors.error_response``): the API's own shape, or TF
Serving's and the Open Inference Protocol's ``{"error": "..."}`` on ``/v1`` and ``/v2``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import http_error_response
from service.settings import ApiKey

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

# Scope keys this service sets for the routes behind the guards.
CLIENT = "trainserve.client"  # who asks: an API key's label, or the client's address on an open service
AUTHENTICATED = "trainserve.authenticated"  # a valid key came with the request


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def matches_any(routes: Sequence[BaseRoute], scope: Scope) -> bool:
    """Whether one of ``routes`` takes this request (its path and its method)."""
    return any(route.matches(scope)[0] is Match.FULL for route in routes)


async def send_response(scope: Scope, send: Send, response: Response) -> int:
    """Send a whole answer from outside any route; its status."""
    await response(scope, _no_body, send)
    return response.status_code


async def refuse(scope: Scope, send: Send, exc: HTTPException) -> None:
    """Answer a request refused before its route ran, in the protocol of its path."""
    await send_response(scope, send, http_error_response(scope["path"], exc))


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def client_of(scope: Scope) -> str:
    """Who a request comes from, for limits per client."""
    label = scope.get(CLIENT)
    if label:
        return str(label)
    client = scope.get("client")
    return f"address-{client[0]}" if client else "address-unknown"


class ApiKeys:
    """The service's API keys: who a request comes from, and whether it may do what it asks.

    401: no key, or one this service does not know. 403: a known read-only key asked to change something. The key
    is compared in constant time and never logged; routes see only its label (in the scope, under ``CLIENT``).
    """

    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    def refusal(self, scope: Scope, *, changes: bool) -> HTTPException | None:
        """Why this request may not go on (None: it may); ``changes``: whether it asks to change something."""
        key = self._key_of(scope)
        if key is not None:
            scope[CLIENT] = key.label
            scope[AUTHENTICATED] = True
        if _is_public(scope["path"]):
            return None
        if key is None:
            return self._unauthorized(scope)
        if key.read_only and changes:
            return HTTPException(403, "this API key may read and predict, not change anything")
        return None

    def _key_of(self, scope: Scope) -> ApiKey | None:
        token = _bearer_token(scope)
        if not token:
            return None
        found = None
        for key in self.keys:  # every key is compared, so the time taken does not tell which one matched
            if hmac.compare_digest(key.secret, token):
                found = key
        return found

    @staticmethod
    def _unauthorized(scope: Scope) -> HTTPException:
        if _bearer_token(scope):
            message, challenge = "the API key is not valid", 'Bearer realm="trainserve", error="invalid_token"'
        else:
            message = "this endpoint needs an API key: Authorization: Bearer <key>"
            challenge = 'Bearer realm="trainserve"'
        return HTTPException(401, message, headers={"WWW-Authenticate": challenge})


def _bearer_token(scope: Scope) -> bytes:
    """The token of an ``Authorization: Bearer`` header (empty if there is none)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


class ApiKeyMiddleware:
    """With keys configured, every request but the public paths needs ``Authorization: Bearer KEY``, and a
    read-only key may only read. The prediction endpoints, reads too, never come here: the prediction lane answers
    them, with the same ``ApiKeys``."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.keys.refusal(scope, changes=scope["method"] not in READ_METHODS)
        if refusal is not None:
            await refuse(scope, send, refusal)
            return
        await self.app(scope, receive, send)


class InflightBudget:
    """Bytes of request bodies held by all requests being received at once. Only the event loop's thread uses it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def take(self, count: int) -> bool:
        if self.used + count > self.capacity:
            return False
        self.used += count
        return True

    def give(self, count: int) -> None:
        self.used -= count


class BodyDeadlines:
    """One watcher for every request body being received: a request that has waited longer than ``timeout`` for
    the next piece of its body is cancelled where it waits, and answered 408. A timer per piece (``asyncio.timeout``)
    would cost more than parsing a small prediction; here a piece costs a clock reading and a dict entry, and the
    watcher wakes at most four times per timeout while anything waits."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.tick = min(1.0, timeout / 4)
        self.waiting: dict[asyncio.Task[object], float] = {}
        self.stalled: set[asyncio.Task[object]] = set()
        self.watcher: asyncio.Task[None] | None = None

    async def receive(self, receive: Receive) -> Message:
        task = asyncio.current_task()
        if task is None:  # not in a task: nothing to cancel, so wait as the server says
            return await receive()
        self.waiting[task] = time.monotonic()
        if self.watcher is None or self.watcher.get_loop() is not task.get_loop():
            self.watcher = task.get_loop().create_task(self._watch())
        try:
            return await receive()
        except asyncio.CancelledError:
            if task not in self.stalled:
                raise
            self.stalled.discard(task)
            task.uncancel()
            raise HTTPException(
                408, f"the request body stopped arriving for {self.timeout:g} s (TRAINSERVE_BODY_TIMEOUT)"
            ) from None
        finally:
            self.waiting.pop(task, None)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.waiting:
                await asyncio.sleep(self.tick)
                late = time.monotonic() - self.timeout
                for task, since in list(self.waiting.items()):
                    if task.get_loop() is not loop:
                        if task.get_loop().is_closed():
                            self.waiting.pop(task, None)  # left by a loop that has ended (a test's)
                        continue
                    if since < late and task not in self.stalled:
                        self.stalled.add(task)
                        task.cancel()
        finally:
            if self.watcher is asyncio.current_task():
                self.watcher = None


# A body declared this small is charged to the budget at once, from its Content-Length, rather than as it arrives:
# the server reads at most that many bytes for it, and one charge costs less than one per piece.
SMALL_BODY = 64 * 1024


class BodyLimits:
    """What a request body may cost, decided by the service, never by the client: one policy for every route.

    - Size: a body over its limit is a 413, at once from Content-Length, else as soon as the bytes received pass it
      — whatever the Content-Type says.
    - Memory: the bytes received by all requests in flight count against one ``budget``; a request that would pass
      it is a 503 with Retry-After. Counted as they arrive, so a client that declares 100 MB and sends ten bytes
      holds ten.
    - Time: a body whose next piece takes longer than ``timeout`` seconds to arrive is a 408.
    """

    def __init__(self, *, max_bytes: int, budget: InflightBudget, timeout: float) -> None:
        self.max_bytes = max_bytes
        self.budget = budget
        self.deadlines = BodyDeadlines(timeout)
        self.too_large = (
            f"the request body is larger than {max_bytes:,} bytes, this service's limit (TRAINSERVE_MAX_REQUEST_BYTES)"
        )

    def intake(self, length: int | None, receive: Receive, *, limit: int | None = None, too_large: str = "") -> Intake:
        """The guarded ``receive`` of one request's body of ``length`` bytes if it says (``framing``), charged
        to the budget (an upload, given its own ``limit``, streams to disk and is not); HTTPException if the body
        is refused before a byte is read."""
        counted = limit is None
        limit = self.max_bytes if limit is None else limit
        too_large = too_large or self.too_large
        if length is not None and length > limit:
            raise HTTPException(413, too_large)
        if counted and length is not None and length <= SMALL_BODY:  # charged at once, from its length
            if not self.budget.take(length):
                raise self.busy()
            return Intake(self, receive, limit, too_large, False, length)
        return Intake(self, receive, limit, too_large, counted, 0)  # charged as it arrives, if counted

    def busy(self) -> HTTPException:
        return HTTPException(
            503,
            f"the service is receiving {self.budget.capacity:,} bytes of request bodies already, its limit "
            f"(TRAINSERVE_MAX_INFLIGHT_BYTES); try again in a moment",
            headers={"Retry-After": "1"},
        )


class Intake:
    """One request's body as it arrives, within its limits: call it as the request's ``receive``; ``close`` once
    the request is answered gives its bytes back to the budget."""

    __slots__ = ("_limit", "_limits", "_per_piece", "_receive", "_too_large", "charged", "complete", "received")

    def __init__(
        self, limits: BodyLimits, receive: Receive, limit: int, too_large: str, per_piece: bool, charged: int
    ) -> None:
        self._limits = limits
        self._receive = receive
        self._limit = limit
        self._too_large = too_large
        self._per_piece = per_piece
        self.charged = charged
        self.received = 0
        self.complete = False

    async def __call__(self) -> Message:
        if self.complete:
            return await self._receive()
        message = await self._limits.deadlines.receive(self._receive)
        if message["type"] != "http.request":
            return message
        size = len(message.get("body", b""))
        self.received += size
        self.complete = not message.get("more_body", False)
        if self.received > self._limit:
            raise HTTPException(413, self._too_large)
        if self._per_piece:
            if not self._limits.budget.take(size):
                raise self._limits.busy()
            self.charged += size
        return message

    def close(self) -> None:
        self._limits.budget.give(self.charged)
        self.charged = 0


class BodyGuard:
    """The body limits (``BodyLimits``) around every route; an upload (one of ``uploads``) has its own limit, the
    file's and room for the form, and streams to disk, out of the budget."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: BodyLimits,
        uploads: Sequence[BaseRoute],
        upload_max_bytes: int,
        upload_file_bytes: int,
    ) -> None:
        self.app = app
        self.limits = limits
        self.uploads = uploads
        self.upload_methods = frozenset(m for route in uploads for m in getattr(route, "methods", None) or ())
        # Upload paths without parameters are known in advance: most requests are told apart without a regex (by
        # the path's end, which a root path in front leaves as it is).
        paths = [getattr(route, "path", "{") for route in uploads]
        self.upload_paths = None if any("{" in path for path in paths) else tuple(paths)
        self.upload_max_bytes = upload_max_bytes
        self.upload_too_large = (
            f"the file is larger than the upload limit of {upload_file_bytes:,} bytes (TRAINSERVE_MAX_UPLOAD_BYTES)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = framing(scope)
        if length == 0 or (length is None and not chunked):
            await self.app(scope, receive, send)  # no body to guard
            return
        upload = (
            scope["method"] in self.upload_methods
            and (self.upload_paths is None or scope["path"].endswith(self.upload_paths))
            and matches_any(self.uploads, scope)
        )
        try:
            if upload:
                intake = self.limits.intake(
                    length, receive, limit=self.upload_max_bytes, too_large=self.upload_too_large
                )
            else:
                intake = self.limits.intake(length, receive)
        except HTTPException as exc:
            await refuse(scope, send, exc)
            return
        try:
            await self.app(scope, intake, send)
        finally:
            intake.close()


def framing(scope: Scope) -> tuple[int | None, bool]:
    """The body's Content-Length, if it has one, and whether it is sent in chunks instead."""
    length, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked
