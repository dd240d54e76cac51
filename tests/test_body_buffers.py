"""Large prediction bodies are received into buffers kept between requests, and only a released one is reused."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive

from service.api.body_buffers import Body, BodyBuffers

KB = 1024


def receiving(body: bytes, chunk: int = 64 * KB) -> Receive:
    """An ASGI server's ``receive`` for a request with this body, sent in pieces of ``chunk`` bytes."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive() -> Message:
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    return receive


def read(buffers: BodyBuffers, body: bytes, content_length: bool = True) -> Body:
    return asyncio.run(buffers.read(len(body) if content_length else None, receiving(body)))


def test_a_small_body_is_read_as_bytes() -> None:
    buffers = BodyBuffers(min_bytes=256 * KB)
    body = read(buffers, b"x" * 1000)
    assert body.data == b"x" * 1000
    assert body.buffer is None


def test_a_released_buffer_takes_the_next_large_body() -> None:
    buffers = BodyBuffers(min_bytes=100 * KB)
    first = read(buffers, bytes(range(256)) * 1000)
    assert bytes(first.data) == bytes(range(256)) * 1000
    buffer = first.buffer
    buffers.release(first)
    second = read(buffers, b"\x07" * 200_000)  # shorter: the kept buffer fits it
    assert second.buffer is buffer
    assert bytes(second.data) == b"\x07" * 200_000
    assert buffers.reused == 1


def test_a_buffer_still_held_is_not_handed_out_again() -> None:
    buffers = BodyBuffers(min_bytes=100 * KB)
    held = read(buffers, b"a" * 300_000)
    other = read(buffers, b"b" * 300_000)
    assert other.buffer is not held.buffer
    assert bytes(held.data) == b"a" * 300_000, "a second body does not overwrite one still in use"
    assert buffers.reused == 0


def test_the_pool_keeps_a_few_buffers_of_bounded_size() -> None:
    buffers = BodyBuffers(min_bytes=100 * KB, keep=2, max_kept_bytes=1000 * KB)
    bodies = [read(buffers, b"z" * size) for size in (200_000, 400_000, 300_000, 2_000_000)]
    for body in bodies:
        buffers.release(body)
    assert sorted(buffers.kept) == [300_000, 400_000], "the two largest that may be kept"
    assert read(buffers, b"y" * 350_000).buffer is not None
    assert buffers.reused == 1


def test_a_chunked_body_grows_a_buffer_of_its_own() -> None:
    buffers = BodyBuffers(min_bytes=100 * KB)
    body = read(buffers, b"c" * 300_000, content_length=False)
    assert body.data == b"c" * 300_000
    buffers.release(body)
    assert buffers.kept == [300_000], "a buffer that grew may serve the next large body"


def test_memory_follows_what_arrives_not_what_is_declared() -> None:
    """A body that declares 100 MB and sends 300 KB takes 300 KB: no buffer is sized from Content-Length."""
    buffers = BodyBuffers(min_bytes=100 * KB)
    pieces = [b"d" * (150 * KB), b"d" * (150 * KB)]

    async def receive() -> Message:
        piece = pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    body = asyncio.run(buffers.read(100_000_000, receive))
    assert body.buffer is not None
    assert len(body.buffer) == 300 * KB
    assert bytes(body.data) == b"d" * (300 * KB)


def test_a_client_that_leaves_mid_body_ends_the_read() -> None:
    from starlette.requests import ClientDisconnect

    pieces: list[Message] = [
        {"type": "http.request", "body": b"e" * KB, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return pieces.pop(0)

    with pytest.raises(ClientDisconnect):
        asyncio.run(BodyBuffers(min_bytes=100 * KB).read(None, receive))
