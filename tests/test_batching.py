"""The micro-batcher on its own: which requests share a call, and that each gets its own rows back.

The "model" here is a plain NumPy function so that the calls it receives can be counted; the end-to-end tests
(test_serving.py) run the same batcher in front of real Keras models.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from service.serving.batching import Batcher, BatchStats, FloatArray


class Model:
    """Answers each row's sum (times two), and records the size of every call."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.started = threading.Event()
        self.gate = gate

    def __call__(self, x: FloatArray) -> FloatArray:
        self.calls.append(len(x))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if np.isnan(x).any():
            raise ValueError("NaN in the batch")
        result: FloatArray = x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2
        return result


def batch(first: int, rows: int) -> FloatArray:
    return np.arange(first, first + rows * 3, dtype=np.float32).reshape(rows, 3)


def expected(x: FloatArray) -> FloatArray:
    result: FloatArray = x.sum(axis=1, keepdims=True) * 2
    return result


def test_requests_queued_together_share_calls_up_to_max_batch_size() -> None:
    model = Model()
    stats = BatchStats().for_model("m", "m", 1)
    sizes = [1, 2, 3, 1, 4, 20, 1]
    inputs = [batch(i * 100, n) for i, n in enumerate(sizes)]
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(model, executor=executor, max_batch_size=8, max_latency_s=0.002, stats=stats)

        async def main() -> list[FloatArray]:
            return list(await asyncio.gather(*(batcher.submit(x) for x in inputs)))

        outputs = asyncio.run(main())
    # 1+2+3+1 fit in 8; 4 then waits for the next call; 20 is larger than a batch and runs alone.
    assert model.calls == [7, 4, 20, 1]
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(y, expected(x))
    assert stats.requests.observations == 4
    assert stats.requests.total == len(sizes)
    assert stats.instances.total == sum(sizes)


def test_requests_arriving_during_a_call_form_the_next_call() -> None:
    gate = threading.Event()
    model = Model(gate)
    stats = BatchStats().for_model("m", "m", 1)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(model, executor=executor, max_batch_size=64, max_latency_s=0.0, stats=stats)

        async def main() -> list[FloatArray]:
            first = asyncio.ensure_future(batcher.submit(batch(0, 1)))
            while not model.started.is_set():  # the model is busy with the first request alone
                await asyncio.sleep(0.001)
            later = [asyncio.ensure_future(batcher.submit(batch(10 * i, 2))) for i in range(1, 6)]
            await asyncio.sleep(0.01)
            gate.set()
            return [await first, *await asyncio.gather(*later)]

        outputs = asyncio.run(main())
    assert model.calls == [1, 10]
    assert np.array_equal(outputs[0], expected(batch(0, 1)))
    for i, y in enumerate(outputs[1:], start=1):
        assert np.array_equal(y, expected(batch(10 * i, 2)))


def test_a_failing_call_fails_the_requests_it_carried_only() -> None:
    model = Model()
    stats = BatchStats().for_model("m", "m", 1)
    bad = np.full((1, 3), np.nan, dtype=np.float32)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(model, executor=executor, max_batch_size=2, max_latency_s=0.0, stats=stats)

        async def main() -> list[FloatArray | BaseException]:
            xs = [batch(0, 1), bad, batch(9, 1)]
            return list(await asyncio.gather(*(batcher.submit(x) for x in xs), return_exceptions=True))

        first, second, third = asyncio.run(main())
    assert model.calls == [2, 1]
    assert isinstance(first, ValueError)
    assert isinstance(second, ValueError)
    assert isinstance(third, np.ndarray)
    assert np.array_equal(third, expected(batch(9, 1)))
    assert stats.requests.observations == 1  # batch sizes count the calls that answered


def test_after_a_batch_of_n_the_next_waits_for_n_requests() -> None:
    """Clients answered together come back together: the batch after a batch of 4 holds open until 4 requests
    have arrived (within max_latency), instead of leaving with the first and making 3 wait a whole call."""
    model = Model()
    stats = BatchStats().for_model("m", "m", 1)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(model, executor=executor, max_batch_size=64, max_latency_s=0.5, stats=stats)

        async def main() -> list[FloatArray]:
            first = await asyncio.gather(*(batcher.submit(batch(i, 1)) for i in range(4)))
            lead = asyncio.ensure_future(batcher.submit(batch(10, 1)))
            await asyncio.sleep(0.02)  # the others arrive a little later, as over a network
            rest = [asyncio.ensure_future(batcher.submit(batch(20 + i, 1))) for i in range(3)]
            return [*first, await lead, *await asyncio.gather(*rest)]

        outputs = asyncio.run(main())
    assert model.calls == [4, 4]
    inputs = [batch(i, 1) for i in range(4)] + [batch(10, 1)] + [batch(20 + i, 1) for i in range(3)]
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(y, expected(x))


def test_a_cheap_call_runs_on_the_event_loop_and_any_other_in_a_thread() -> None:
    """``inline`` says which batch sizes are cheaper than the trip to a thread; merging is the same either way."""
    threads: list[str] = []

    class Where(Model):
        def __call__(self, x: FloatArray) -> FloatArray:
            threads.append(threading.current_thread().name)
            return super().__call__(x)

    model = Where()
    stats = BatchStats().for_model("m", "m", 1)
    inputs = [batch(i * 10, n) for i, n in enumerate([1, 2, 3, 4, 5])]
    with ThreadPoolExecutor(1, thread_name_prefix="inference") as executor:
        batcher = Batcher(
            model, executor=executor, max_batch_size=8, max_latency_s=0.0, stats=stats, inline=lambda rows: rows <= 3
        )

        async def main() -> list[FloatArray]:
            first = [await batcher.submit(x) for x in inputs[:2]]  # one at a time: 1 row, then 2
            rest = await asyncio.gather(*(batcher.submit(x) for x in inputs[2:]))  # 3 + 4 merged: 7 rows
            return [*first, *rest]

        outputs = asyncio.run(main())
    for x, y in zip(inputs, outputs, strict=True):
        assert np.array_equal(y, expected(x))
    assert model.calls[:3] == [1, 2, 7]
    assert threads[:2] == ["MainThread", "MainThread"]
    assert threads[2].startswith("inference")


def test_one_client_at_a_time_is_answered_at_once_and_a_burst_still_merges() -> None:
    """After a batch of one, a cheap request that is still alone once the others ready to ask have asked runs at
    once, with no task of its own; requests that arrive meanwhile queue behind it as usual and share one call, so
    a service that was answering one client at a time goes back to merging as soon as more come."""
    model = Model()
    stats = BatchStats().for_model("m", "m", 1)
    with ThreadPoolExecutor(1) as executor:
        batcher = Batcher(
            model, executor=executor, max_batch_size=64, max_latency_s=0.5, stats=stats, inline=lambda rows: True
        )

        async def main() -> tuple[list[FloatArray], list[FloatArray], int]:
            loop = asyncio.get_running_loop()
            created: list[object] = []

            def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
                created.append(coro)
                return asyncio.Task(coro, loop=loop, **kwargs)

            one_at_a_time = [await batcher.submit(batch(i, 1)) for i in range(5)]
            loop.set_task_factory(counting)
            alone = await batcher.submit(batch(50, 1))
            assert created == [], "a lone request needs no task to drain it"
            loop.set_task_factory(None)
            burst = await asyncio.gather(*(batcher.submit(batch(100 + i, 1)) for i in range(6)))
            after = await asyncio.gather(*(batcher.submit(batch(200 + i, 1)) for i in range(6)))
            return [*one_at_a_time, alone], [*burst, *after], len(model.calls)

        singles, merged, calls = asyncio.run(main())
    for i, y in enumerate(singles[:5]):
        assert np.array_equal(y, expected(batch(i, 1)))
    assert np.array_equal(singles[5], expected(batch(50, 1)))
    assert model.calls[:6] == [1] * 6
    # The first of the burst found the batcher alone and let the others ask first: all six share one call, and
    # so do the six after them.
    assert model.calls[6:] == [6, 6], model.calls
    for i, y in enumerate(merged[:6]):
        assert np.array_equal(y, expected(batch(100 + i, 1)))
    assert calls == 8
    assert stats.requests.total == 5 + 1 + 12
