"""Prediction bodies received as they arrive, into buffers kept between requests when they are large.

A 31 MB ``.npy`` body read the usual way ends as a new 31 MB ``bytes`` each time, and the kernel hands a fresh
allocation that size over one zeroed page at a time: for such a body the page faults cost more than the copying.
A buffer that has served one large body has its pages already, so the next one is received into it at the speed
of a memory copy.

Memory follows what the client sends, never what it declares: a body goes into a kept buffer only if one is free
and large enough already, and otherwise into a buffer that grows as the bytes arrive. (How many bytes all bodies
in flight may hold together is the body guard's budget, in ``middleware``.)

A buffer goes back to the pool only once its request is done with it (``release``): a request that fails or is
cancelled while its instances may still wait for the model simply drops its buffer, which is freed once nothing
refers to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

# Bodies declared smaller than this are read the usual way: their pages are reused by the allocator anyway.
MIN_BYTES = 256 * 1024
# At most this many buffers are kept, each at most MAX_KEPT_BYTES.
KEEP = 2
MAX_KEPT_BYTES = 64 * 1024 * 1024


BodyBytes = bytes | bytearray | memoryview


@dataclass
class Body:
    """A request body: ``data`` is valid until the buffer is released."""

    data: BodyBytes
    buffer: bytearray | None = None


class BodyBuffers:
    def __init__(self, *, min_bytes: int = MIN_BYTES, keep: int = KEEP, max_kept_bytes: int = MAX_KEPT_BYTES) -> None:
        self.min_bytes = min_bytes
        self.keep = keep
        self.max_kept_bytes = max_kept_bytes
        self._free: list[bytearray] = []
        self.reused = 0

    async def read(self, length: int | None, receive: Receive) -> Body:
        """The whole body, received from ``receive`` (an ASGI app's) as it arrives; ``length`` is its
        Content-Length, if it has one. ClientDisconnect if the client goes before it is all there."""
        kept = self._take(length) if length is not None and length >= self.min_bytes else None
        if kept is not None:
            return await _read_into(kept, receive)
        piece, more = _content(await receive())
        if length is not None and length < self.min_bytes:
            if not more:
                return Body(piece)
            pieces = [piece]
            while more:
                piece, more = _content(await receive())
                pieces.append(piece)
            return Body(b"".join(pieces))
        grown = bytearray(piece)
        while more:
            piece, more = _content(await receive())
            grown += piece
        return Body(grown, grown)

    def release(self, body: Body) -> None:
        """Give the body's buffer back: only once nothing will read ``body.data`` again."""
        buffer = body.buffer
        body.buffer = None
        if buffer is None or len(buffer) > self.max_kept_bytes or len(buffer) < self.min_bytes:
            return
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

    def _take(self, length: int) -> bytearray | None:
        """A kept buffer that holds ``length`` bytes already, or None (the body then grows its own)."""
        fitting = [i for i, buffer in enumerate(self._free) if len(buffer) >= length]
        if not fitting:
            return None
        self.reused += 1
        return self._free.pop(min(fitting, key=lambda i: len(self._free[i])))


async def _read_into(kept: bytearray, receive: Receive) -> Body:
    view = memoryview(kept)
    received, more = 0, True
    while more:
        piece, more = _content(await receive())
        end = received + len(piece)
        if end > len(kept):  # more than declared: HTTP/1.1 framing forbids it, but never write past the end
            raise ValueError("the body is longer than its Content-Length")
        view[received:end] = piece
        received = end
    return Body(view[:received], kept)


def _content(message: Message) -> tuple[bytes, bool]:
    """A piece of the body and whether more follows; ClientDisconnect if the client has gone."""
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    return message.get("body", b""), message.get("more_body", False)
