"""A lean HTTP/1.1 load generator: keep-alive connections over asyncio streams, requests prepared once.

The client shares the machine with the server it measures, so it does as little as it can per request; every
route in one run is loaded by the same client, which is what makes their ratios fair."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


def http_request(path: str, body: bytes, content_type: str = "application/json", accept: str = "*/*") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nAccept: {accept}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class BadResponseError(RuntimeError):
    pass


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if head[9:12] != b"200":
        raise BadResponseError(f"{head[:12].decode()}: {body[:300]!r}")
    return body


@dataclass
class Target:
    """One route to load: where it listens and the request it is sent."""

    port: int
    request: bytes


async def _interleaved(
    host: str, targets: list[Target], concurrency: int, warmup: float, slices: int, slice_seconds: float
) -> list[float]:
    connections = [[await asyncio.open_connection(host, target.port) for _ in range(concurrency)] for target in targets]

    async def load(index: int, seconds: float) -> tuple[int, float]:
        request = targets[index].request
        start = time.perf_counter()
        stop_at = start + seconds
        done = [0]

        async def client(slot: int) -> None:
            while time.perf_counter() < stop_at:
                reader, writer = connections[index][slot]
                try:
                    await _exchange(reader, writer, request)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    # The server closed the connection while it sat idle during the other targets' turns (its
                    # keep-alive timeout): open another, and send the request again.
                    writer.close()
                    connections[index][slot] = await asyncio.open_connection(host, targets[index].port)
                    continue
                done[0] += 1

        await asyncio.gather(*(client(slot) for slot in range(len(connections[index]))))
        return done[0], time.perf_counter() - start

    try:
        for index in range(len(targets)):
            await load(index, warmup)
        counts = [0] * len(targets)
        seconds = [0.0] * len(targets)
        for turn in range(slices):
            # Each round starts with the next target: whichever follows another has no place of its own.
            for step in range(len(targets)):
                index = (turn + step) % len(targets)
                count, elapsed = await load(index, slice_seconds)
                counts[index] += count
                seconds[index] += elapsed
    finally:
        for pool in connections:
            for _, writer in pool:
                writer.close()
    return [count / elapsed for count, elapsed in zip(counts, seconds, strict=True)]


def throughputs(
    host: str,
    targets: list[Target],
    concurrency: int,
    warmup: float = 1.0,
    slices: int = 10,
    slice_seconds: float = 0.5,
) -> list[float]:
    """Requests per second of each target with ``concurrency`` clients sending its request back to back.

    The targets take turns in short slices, each round starting with the next one, so that whatever else the
    machine is doing weighs on each of them alike; each is warmed up first."""
    import uvloop

    return uvloop.run(_interleaved(host, targets, concurrency, warmup, slices, slice_seconds))


async def _timed(host: str, port: int, request: bytes, repeat: int) -> tuple[list[float], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    times, body = [], b""
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            body = await _exchange(reader, writer, request)
            times.append(time.perf_counter() - start)
    finally:
        writer.close()
    return times, body


def timed(host: str, port: int, request: bytes, repeat: int) -> tuple[list[float], bytes]:
    """Seconds each of ``repeat`` sequential requests took, and the last answer."""
    import uvloop

    return uvloop.run(_timed(host, port, request, repeat))
