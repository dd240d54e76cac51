"""Adaptive micro-batching: concurrent predict requests for one model run as one call of the model.

A TensorFlow call costs about the same for 1 instance as for 64 (the fixed cost is dispatch, not arithmetic),
so under load merging requests multiplies throughput. While a batch runs, the requests that arrive queue up, and
all of them (up to ``max_batch_size`` instances) form the next batch.

The batcher adapts how long it holds a batch open to the load it sees: ``c`` clients waiting on a batch of ``c``
requests send their next ones all at about the same time, so right after a batch of ``c`` the next one waits
(at most ``max_latency``) until ``c`` requests have arrived, rather than leaving with the first and making the
other ``c - 1`` wait a whole call. A request that finds its model idle and no recent batch starts at once.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

# Histogram buckets for batch sizes, in requests and in instances.
BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, float("inf"))


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    observations: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.observations += 1

    def cumulative(self) -> list[tuple[float, int]]:
        running = 0
        out = []
        for bound, count in zip(BUCKETS, self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass
class ModelBatchStats:
    """How one model's calls were batched: for each call, how many requests and instances it merged."""

    model_id: str
    name: str
    version: int
    requests: Histogram = field(default_factory=Histogram)
    instances: Histogram = field(default_factory=Histogram)


class BatchStats:
    """Batch sizes per model since the process started (the /metrics endpoint shows them)."""

    def __init__(self) -> None:
        self.models: dict[str, ModelBatchStats] = {}

    def for_model(self, model_id: str, name: str, version: int) -> ModelBatchStats:
        return self.models.setdefault(model_id, ModelBatchStats(model_id, name, version))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass
class _Pending:
    x: FloatArray
    future: asyncio.Future[FloatArray]


class Batcher:
    """Feeds one model's call with merged batches, one batch at a time, in an executor thread (or, for a call
    cheaper than the trip to a thread, on the event loop)."""

    def __init__(
        self,
        call: Callable[[FloatArray], FloatArray],
        *,
        executor: Executor,
        max_batch_size: int,
        max_latency_s: float,
        stats: ModelBatchStats,
        inline: Callable[[int], bool] | None = None,
    ) -> None:
        self._call = call
        # Whether a call on so many instances is cheaper than handing it to a thread and back (some 50–100 µs):
        # then it runs on the event loop itself.
        self._inline = inline
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_latency_s = max_latency_s
        self._stats = stats
        self._queue: list[_Pending] = []
        self._draining: asyncio.Task[None] | None = None
        # Requests the last batch carried, and when it was answered: how many to expect back soon.
        self._expected = 1
        self._answered_at = float("-inf")
        self._enough: asyncio.Future[None] | None = None
        # A request alone is letting others ask first (see submit): they queue up meanwhile.
        self._alone = False

    async def submit(self, x: FloatArray) -> FloatArray:
        """The model's outputs for ``x`` (a batch of instances), computed in a call shared with others."""
        loop = asyncio.get_running_loop()
        if self._one_at_a_time(loop) and self._inline is not None and self._inline(len(x)):
            # One client at a time, and a call cheaper than a task: once whoever was ready to ask has asked (a turn
            # of the event loop, during which others queue up as usual), a request still alone is answered at once.
            self._alone = True
            try:
                await asyncio.sleep(0)
            finally:
                self._alone = False
            if not self._queue and self._draining is None:
                return self._run_alone(x, loop)
        future: asyncio.Future[FloatArray] = loop.create_future()
        self._queue.append(_Pending(x, future))
        if self._enough is not None and len(self._queue) >= self._expected:
            _resolve(self._enough)
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    def _one_at_a_time(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Nothing queued or running, and the last batch, answered just now, was a single request."""
        return (
            not self._alone
            and self._draining is None
            and not self._queue
            and self._expected == 1
            and loop.time() - self._answered_at < 10 * self._max_latency_s
        )

    def _run_alone(self, x: FloatArray, loop: asyncio.AbstractEventLoop) -> FloatArray:
        output = self._call(x)
        self._record(1, len(x))
        self._answered_at = loop.time()
        return output

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                await self._let_arrivals_join(loop)
                batch = self._take()
                xs = [p.x for p in batch]
                try:
                    if self._inline is not None and self._inline(sum(len(x) for x in xs)):
                        outputs = self._run(xs)
                    else:
                        outputs = await loop.run_in_executor(self._executor, self._run, xs)
                except Exception as exc:
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                self._record(len(batch), sum(len(p.x) for p in batch))
                for pending, output in zip(batch, outputs, strict=True):
                    if not pending.future.done():  # its client may have gone
                        pending.future.set_result(output)
                self._expected, self._answered_at = len(batch), loop.time()
        finally:
            self._draining = None
            for pending in self._queue:  # only if the loop is shutting down
                if not pending.future.done():
                    pending.future.cancel()

    async def _let_arrivals_join(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the batch open, at most max_latency: until as many requests as the last batch carried have
        arrived if that batch was answered just now, and while requests keep arriving (unless that batch was a
        single request)."""
        deadline = loop.time() + self._max_latency_s
        recent = loop.time() - self._answered_at < 10 * self._max_latency_s
        if recent and len(self._queue) < self._expected and self._rows() < self._max_batch_size:
            self._enough = enough = loop.create_future()
            timer = loop.call_at(deadline, _resolve, enough)
            try:
                await enough
            finally:
                timer.cancel()
                self._enough = None
        if recent and self._expected == 1:
            # One client at a time: whoever else was ready to ask has joined while this task started; waiting a
            # turn of the event loop for more would only delay the answer.
            return
        while self._rows() < self._max_batch_size and loop.time() < deadline:
            waiting = len(self._queue)
            await asyncio.sleep(0)
            if len(self._queue) == waiting:
                return

    def _rows(self) -> int:
        return sum(len(p.x) for p in self._queue)

    def _take(self) -> list[_Pending]:
        """The oldest requests whose instances fit in max_batch_size; always at least one."""
        rows = len(self._queue[0].x)
        count = 1
        while count < len(self._queue) and rows + len(self._queue[count].x) <= self._max_batch_size:
            rows += len(self._queue[count].x)
            count += 1
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    def _run(self, xs: list[FloatArray]) -> list[FloatArray]:
        if len(xs) == 1:
            return [self._call(xs[0])]
        outputs = self._call(np.concatenate(xs))
        rows, start = [], 0
        for x in xs:  # views, each request's own rows
            rows.append(outputs[start : start + len(x)])
            start += len(x)
        return rows

    def _record(self, requests: int, instances: int) -> None:
        self._stats.requests.observe(requests)
        self._stats.instances.observe(instances)
