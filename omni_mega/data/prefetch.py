"""Preparing the next steps' micro-batches in the background, so the step never waits for its input.

The main thread plans steps (sizes only, in stream order: `BatchSource.plan_step`) and hands each plan to one
worker thread that materialises it (reads tokens, decodes and packs images: the decoders and `pack_images` release
the GIL). Plans are made in order and materialising is a pure function of the plan, so the batches are the same
bytes with and without prefetching, and the source's resume state never runs ahead of the steps taken. At most
`depth` steps are prepared ahead, and never past the stage's last step (`steps_left`).
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor


class Prefetcher:
    """next_step() -> (this rank's micro-batches of the next step, milliseconds the caller waited for them).

    source: a BatchSource; sl: the stage's StepSlice; steps_left: steps of the stage still to take; depth: steps
    prepared ahead (0: materialise in the caller's thread when asked)."""

    def __init__(self, source, sl, steps_left: int, depth: int = 2) -> None:
        self.source, self.sl, self.depth = source, sl, max(0, int(depth))
        self.left = int(steps_left)  # steps not yet handed out
        self.queued: deque[Future] = deque()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="omni-prefetch") if self.depth else None

    def _fill(self) -> None:
        # Plan k of the queue is `k` steps after the next one: the source's cursor only moves in `advance`.
        while self.pool is not None and len(self.queued) < min(self.depth, self.left):
            plan = self.source.plan_step(self.sl, ahead=len(self.queued))
            self.queued.append(self.pool.submit(self.source.materialize, plan))

    def next_step(self) -> tuple[list[dict], float]:
        if self.left <= 0:
            raise RuntimeError("Prefetcher: the stage has no steps left")
        t0 = time.perf_counter()
        if self.pool is None:
            batches = self.source.materialize(self.source.plan_step(self.sl))
        else:
            self._fill()
            batches = self.queued.popleft().result()
        wait_ms = (time.perf_counter() - t0) * 1e3
        self.left -= 1
        return batches, wait_ms

    def step_done(self) -> None:
        """Call after the source's `advance` for the step just taken: queues the next plans."""
        self._fill()

    def close(self) -> None:
        for f in self.queued:
            f.cancel()
        self.queued.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
