"""Build the next step's micro-batches in a background thread while this step trains.

A batch is a pure function of (seed, step, rows) (budgetlm/data/loader.py), so the rows of step
s + 1 are known before step s has run and building them early changes nothing but when they are
built: the same tensors in the same order, and nothing to checkpoint (a resumed run simply
builds its first step's rows in the foreground). On CUDA the rows are put in pinned memory, so
the loop's `non_blocking` copy to the GPU is truly asynchronous.

Only the run's own data stream is prefetched. Rows a method supplies itself (batch selection,
`Method.batch_rows`) depend on the model after this step and are built by the method; a step
whose rows came from a method schedules nothing, so no batch is built to be thrown away.

One worker thread, not worker processes (torch's DataLoader): the stream's batches are cheap
numpy work that mostly releases the GIL, the loop's hot path is a few Python calls per
micro-batch, and a thread shares the stream's cached epoch permutations instead of copying them.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

Batch = dict[str, torch.Tensor]
Rows = tuple[int, int, int]  # (step, start, stop): positions [start, stop) of a step's batch


class BatchPrefetcher:
    """The run's stream batches, built one step ahead when `enabled`."""

    def __init__(self, stream: Any, *, enabled: bool, pin: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.pin = pin
        self._pool: ThreadPoolExecutor | None = None  # started on first use, again after close
        self._ahead: dict[Rows, Future[Batch]] = {}
        self.hits = 0  # rows that were ready (or under way) when asked for: for tests and docs

    def _build(self, step: int, start: int, stop: int) -> Batch:
        batch = self.stream.batch(step, start, stop)
        if self.pin:
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch

    def get(self, step: int, start: int, stop: int) -> Batch:
        """The rows, prefetched when they were scheduled, else built now."""
        future = self._ahead.pop((step, start, stop), None)
        if future is not None:
            self.hits += 1
            return future.result()  # an error in the worker is raised here, in the loop
        return self._build(step, start, stop)

    def schedule(self, rows: list[Rows]) -> None:
        """Start building `rows`; anything scheduled before and not taken is dropped."""
        for future in self._ahead.values():
            future.cancel()
        self._ahead = {}
        if not self.enabled or not rows:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="budgetlm-prefetch")
        for key in rows:
            self._ahead[key] = self._pool.submit(self._build, *key)

    def close(self) -> None:
        """Drop what was not taken and stop the worker (waits for a build under way)."""
        self.schedule([])
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
