"""The one bounded ordered thread pool every client fetches in parallel with (re-exported by sources.base)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int, name: str,
                stop: threading.Event | None = None) -> Iterator[R]:
    """fn over items on `workers` threads, at most `depth` calls in flight, results in input order.

    The one bounded pool of every client. The bound keeps memory flat and lets a slow producer (list
    paging) overlap the calls; `items` is read lazily from the consuming thread, so a generator of
    items may depend on what the consumer saw so far. A failed call raises in the consumer (in input
    order). When the consumer stops early or a call fails, queued calls are cancelled and `stop` (if
    given) is set before the running ones are waited for, so long workers can return early.
    """
    inflight: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            for item in items:
                inflight.append(pool.submit(fn, item))
                while len(inflight) >= max(depth, 1):
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()
        except BaseException:  # also GeneratorExit: the consumer stopped early
            if stop is not None:
                stop.set()
            for future in inflight:
                future.cancel()
            raise
