"""Receive buffers kept between requests, for large binary prediction bodies.

A 31 MB ``.npy`` body read the usual way ends as a new 31 MB ``bytes`` each time, and the kernel hands a fresh
allocation that size over one zeroed page at a time: for such a body the page faults cost more than the copying.
A buffer that has served one large body has its pages already, so the next one is received into it at the speed
of a memory copy.

A buffer goes back to the pool only once its request is done with it (``release``): a request that fails or is
cancelled while its instances may still wait for the model simply drops its buffer, which is freed once nothing
refers to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

# Bodies smaller than this are read the usual way: their pages are reused by the allocator anyway.
MIN_BYTES = 256 * 1024
# At most this many buffers are kept, each at most MAX_KEPT_BYTES.
KEEP = 2
MAX_KEPT_BYTES = 256 * 1024 * 1024


@dataclass
class Body:
    """A request body: ``data`` is valid until the buffer is released."""

    data: memoryview | bytes
    buffer: bytearray | None = None


class BodyBuffers:
    def __init__(self, *, min_bytes: int = MIN_BYTES, keep: int = KEEP, max_kept_bytes: int = MAX_KEPT_BYTES) -> None:
        self.min_bytes = min_bytes
        self.keep = keep
        self.max_kept_bytes = max_kept_bytes
        self._free: list[bytearray] = []
        self.reused = 0

    async def read(self, request: Request) -> Body:
        """The whole body; a large one with a Content-Length is received into a kept buffer."""
        length_header = request.headers.get("content-length", "")
        length = int(length_header) if length_header.isdigit() else -1
        if length < self.min_bytes:
            return Body(await request.body())
        buffer = self._take(length)
        view = memoryview(buffer)
        received = 0
        async for chunk in request.stream():
            end = received + len(chunk)
            if end > length:  # the server frames bodies by Content-Length; this cannot happen over HTTP/1.1
                raise ValueError("the body is longer than its Content-Length")
            view[received:end] = chunk
            received = end
        return Body(view[:received], buffer)

    def release(self, body: Body) -> None:
        """Give the body's buffer back: only once nothing will read ``body.data`` again."""
        buffer = body.buffer
        if buffer is None or len(buffer) > self.max_kept_bytes:
            return
        body.buffer = None
        if len(self._free) < self.keep:
            self._free.append(buffer)
        else:  # keep the larger ones
            smallest = min(range(len(self._free)), key=lambda i: len(self._free[i]))
            if len(self._free[smallest]) < len(buffer):
                self._free[smallest] = buffer

    @property
    def kept(self) -> list[int]:
        """The sizes of the buffers waiting for a body."""
        return [len(buffer) for buffer in self._free]

    def _take(self, length: int) -> bytearray:
        fitting = [i for i, buffer in enumerate(self._free) if len(buffer) >= length]
        if fitting:
            self.reused += 1
            return self._free.pop(min(fitting, key=lambda i: len(self._free[i])))
        return bytearray(length)
