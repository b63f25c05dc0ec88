"""Dynamic batching per deployment: admitted requests that can share a pipeline call run as one.

Every admitted request joins its deployment's queue and schedules one turn on the deployment's worker
thread (the one thread that runs its pipeline). A turn takes the oldest waiting request and every
waiting request with the same `batch_key` (steps, size, guidance; a drilled request runs alone), up to
`max_batch_size`; while the batch is not full it waits for company until `max_batch_delay_ms` after
the oldest request arrived, so a lone request waits at most that long. Requests that arrive while a
batch runs are taken by the next turn without waiting: under load, batches form at no extra latency.
A turn whose request already left with an earlier batch returns at once.

Each element is answered through its own future as soon as its result is known: at its abort or
stop step, or when the call ends (runner.generate_batch). Admission (core/service.py) counts
requests, not batches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from latentguard.server.pipelines.runner import Element, GenerateResult, PipelineRunner, batch_key


@dataclass
class _Waiting:
    element: Element
    future: Future[GenerateResult]
    key: tuple[int, int, int, float] | None
    arrived: float = field(default_factory=time.monotonic)


def _answer(future: Future[GenerateResult]) -> Callable[[GenerateResult], None]:
    def answer(result: GenerateResult) -> None:
        if not future.done():
            future.set_result(result)

    return answer


class Batcher:
    def __init__(
        self,
        runner: PipelineRunner,
        executor: ThreadPoolExecutor,
        max_batch_size: int,
        max_batch_delay_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.runner, self.executor = runner, executor
        self.max_size, self.delay = max_batch_size, max_batch_delay_ms / 1000
        self.on_batch = on_batch
        self._waiting: list[_Waiting] = []
        self._arrivals = threading.Condition()

    def submit(self, element: Element) -> Future[GenerateResult]:
        """Queue one request; its future resolves with its result (or the pipeline's exception)."""
        future: Future[GenerateResult] = Future()
        element.answer = _answer(future)
        with self._arrivals:
            self._waiting.append(_Waiting(element, future, batch_key(element.request)))
            self._arrivals.notify_all()
        self.executor.submit(self._turn)
        return future

    def _take(self) -> list[_Waiting]:
        """The next batch: the oldest request and its company (waiting for company if allowed)."""
        with self._arrivals:
            if not self._waiting:
                return []
            head = self._waiting.pop(0)
            batch = [head]
            deadline = head.arrived + self.delay
            while head.key is not None:
                for w in [w for w in self._waiting if w.key == head.key][: self.max_size - len(batch)]:
                    self._waiting.remove(w)
                    batch.append(w)
                left = deadline - time.monotonic()
                if len(batch) >= self.max_size or left <= 0:
                    break
                self._arrivals.wait(left)
            return batch

    def _turn(self) -> None:
        batch = self._take()
        if not batch:
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        try:
            self.runner.generate_batch([w.element for w in batch])
        except BaseException as exc:  # the pipeline failed: every element not yet answered gets it
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)

    def close(self, reason: Exception) -> None:
        """Shutting down: requests still waiting for a turn get `reason`."""
        with self._arrivals:
            waiting, self._waiting = self._waiting, []
        for w in waiting:
            if not w.future.done():
                w.future.set_exception(reason)
