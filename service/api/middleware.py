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
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
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


async def reply(scope: Scope, send: Send, status: int, type: str, message: str, **headers: str) -> None:
    response = error_response(scope["path"], status, type, message, headers=headers or None)
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def client_of(scope: Scope) -> str:
    """Who a request comes from, for limits per client."""
    label = scope.get(CLIENT)
    if label:
        return str(label)
    client = scope.get("client")
    return f"address-{client[0]}" if client else "address-unknown"


class ApiKeyMiddleware:
    """With keys configured, every request but the public paths needs ``Authorization: Bearer KEY``.

    401: no key, or one this service does not know. 403: a known read-only key asked to change something; the
    prediction endpoints (``predictions``, matched as the router matches them, method included) are reads.
    The key is compared in constant time and never logged; routes see only its label.
    """

    def __init__(self, app: ASGIApp, keys: list[ApiKey], predictions: Sequence[BaseRoute]) -> None:
        self.app = app
        self.keys = keys
        self.predictions = predictions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = self._key_of(scope)
        if key is not None:
            scope[CLIENT] = key.label
            scope[AUTHENTICATED] = True
        if _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if key is None:
            await self._refuse(scope, send)
            return
        if key.read_only and scope["method"] not in READ_METHODS and not matches_any(self.predictions, scope):
            await reply(scope, send, 403, "forbidden", "this API key may read and predict, not change anything")
            return
        await self.app(scope, receive, send)

    def _key_of(self, scope: Scope) -> ApiKey | None:
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        found = None
        for key in self.keys:  # every key is compared, so the time taken does not tell which one matched
            if hmac.compare_digest(key.secret, token.strip()):
                found = key
        return found

    async def _refuse(self, scope: Scope, send: Send) -> None:
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            message, challenge = "the API key is not valid", 'Bearer realm="trainserve", error="invalid_token"'
        else:
            message = "this endpoint needs an API key: Authorization: Bearer <key>"
            challenge = 'Bearer realm="trainserve"'
        await reply(scope, send, 401, "unauthorized", message, **{"WWW-Authenticate": challenge})


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


class BodyGuard:
    """What a request body may cost, decided by the service, never by the client.

    - Size: a body over ``max_bytes`` (the uploads' own limit on ``uploads``: the file's, and room for the form) is
      a 413, at once from
      Content-Length, else as soon as the bytes received pass it — whatever the Content-Type says.
    - Memory: the bytes received by all requests in flight count against one ``budget``; a request that would pass
      it is a 503 with Retry-After. Counted as they arrive, so a client that declares 100 MB and sends ten bytes
      holds ten. Uploads stream to disk and are left out of the budget.
    - Time: a body whose next piece takes longer than ``timeout`` seconds to arrive is a 408.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        uploads: Sequence[BaseRoute],
        upload_max_bytes: int,
        upload_file_bytes: int,
        budget: InflightBudget,
        timeout: float,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = uploads
        self.upload_methods = frozenset(m for route in uploads for m in getattr(route, "methods", None) or ())
        # Upload paths without parameters are known in advance: most requests are told apart without a regex (by
        # the path's end, which a root path in front leaves as it is).
        paths = [getattr(route, "path", "{") for route in uploads]
        self.upload_paths = None if any("{" in path for path in paths) else tuple(paths)
        self.upload_max_bytes = upload_max_bytes
        self.budget = budget
        self.deadlines = BodyDeadlines(timeout)
        self.messages = {
            True: f"the file is larger than the upload limit of {upload_file_bytes:,} bytes "
            f"(TRAINSERVE_MAX_UPLOAD_BYTES)",
            False: f"the request body is larger than {max_bytes:,} bytes, this service's limit "
            f"(TRAINSERVE_MAX_REQUEST_BYTES)",
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length, chunked = _framing(scope)
        if length == 0 or (length is None and not chunked):
            await self.app(scope, receive, send)  # no body to guard
            return
        upload = (
            scope["method"] in self.upload_methods
            and (self.upload_paths is None or scope["path"].endswith(self.upload_paths))
            and matches_any(self.uploads, scope)
        )
        limit = self.upload_max_bytes if upload else self.max_bytes
        too_large = self.messages[upload]
        if length is not None and length > limit:
            await reply(scope, send, 413, "payload_too_large", too_large)
            return
        charged = 0
        if not upload and length is not None and length <= SMALL_BODY:
            if not self.budget.take(length):
                await self._busy(scope, send)
                return
            charged = length
        budget = None if upload or charged else self.budget
        received = 0
        complete = False

        async def guarded_receive() -> Message:
            nonlocal received, charged, complete
            if complete:
                return await receive()
            message = await self.deadlines.receive(receive)
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            received += size
            complete = not message.get("more_body", False)
            if received > limit:
                raise HTTPException(413, too_large)
            if budget is not None:
                if not budget.take(size):
                    raise HTTPException(503, _busy_message(budget), headers={"Retry-After": "1"})
                charged += size
            return message

        try:
            await self.app(scope, guarded_receive, send)
        finally:
            self.budget.give(charged)

    async def _busy(self, scope: Scope, send: Send) -> None:
        await reply(scope, send, 503, "unavailable", _busy_message(self.budget), **{"Retry-After": "1"})


def _busy_message(budget: InflightBudget) -> str:
    return (
        f"the service is receiving {budget.capacity:,} bytes of request bodies already, its limit "
        f"(TRAINSERVE_MAX_INFLIGHT_BYTES); try again in a moment"
    )


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The body's Content-Length, if it has one, and whether it is sent in chunks instead."""
    length, chunked = None, False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked
