"""A work queue of keys (NIMServices, NIMCaches): coalesced, one worker per key, retried with backoff.

Every trigger of a reconcile (the object's own events, its children's and pods' events, node changes,
the periodic resync) only adds the object's key here; worker threads take keys off and reconcile from
the newest facts. That is what makes the operator level-based for every trigger alike:

- A key added while it waits is coalesced: a burst of 50 pod events costs one reconcile.
- A key added while a worker processes it runs again right after, never twice at once.
- A failed reconcile is retried after ``base * 2**(failures-1)`` seconds, up to ``max_delay``, whatever
  triggered it (kopf retries only its own change handlers, never event handlers). Success resets it.

Pure threading, no Kubernetes: unit-tested directly.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys to process; see the module docstring for the guarantees."""

    def __init__(
        self, *, base_delay: float = 0.5, max_delay: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[K] = deque()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._later: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._failures: dict[K, int] = {}
        self._closed = False

    def add(self, key: K, *, after: float = 0.0) -> None:
        """Queue ``key`` now, or after ``after`` seconds (a sooner add of the same key is not delayed)."""
        with self._cond:
            if self._closed:
                return
            if after > 0:
                heapq.heappush(self._later, (self._clock() + after, next(self._seq), key))
            else:
                self._enqueue(key)
            self._cond.notify()

    def _enqueue(self, key: K) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)

    def _promote_due(self) -> float | None:
        """Move keys whose delay is over into the ready queue; seconds until the next one, if any."""
        now = self._clock()
        while self._later and self._later[0][0] <= now:
            self._enqueue(heapq.heappop(self._later)[2])
        return self._later[0][0] - now if self._later else None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key to process (the caller must call :meth:`done`), or None when closed or timed out."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                wait = self._promote_due()
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: K) -> None:
        """The worker finished ``key``; if it was added meanwhile, it is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._enqueue(key)
                self._cond.notify()

    def retry(self, key: K) -> float:
        """Queue ``key`` again after its backoff (which doubles with each failure); the delay used."""
        with self._cond:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
        delay = min(self.base_delay * 2.0 ** (failures - 1), self.max_delay)
        self.add(key, after=delay)
        return delay

    def succeeded(self, key: K) -> None:
        """Reset the backoff of ``key``."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """Drop the backoff and any delayed add of a key whose object is gone."""
        with self._cond:
            self._failures.pop(key, None)
            if any(k == key for _, _, k in self._later):
                self._later = [item for item in self._later if item[2] != key]
                heapq.heapify(self._later)

    def close(self) -> None:
        """Wake every waiting worker with None; later adds are ignored."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys waiting to be processed now or later (not those being processed)."""
        with self._cond:
            return len(self._queued) + len(self._later)


class Workers(Generic[K]):
    """Threads that take keys off a queue and call ``process``; an exception schedules a retry.

    ``process`` returns normally when the key reached a state that needs no retry (including a spec the
    operator refused: retrying cannot help until it changes, and its change adds the key anyway).
    """

    def __init__(
        self,
        queue: WorkQueue[K],
        process: Callable[[K], None],
        *,
        count: int,
        on_error: Callable[[K, BaseException, float], None] | None = None,
        name: str = "reconcile",
    ) -> None:
        self.queue = queue
        self._process = process
        self._on_error = on_error or (lambda key, err, delay: None)
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True) for i in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.queue.close()
        for thread in self._threads:
            thread.join(timeout)

    def _loop(self) -> None:
        while (key := self.queue.get()) is not None:
            try:
                self._process(key)
            except Exception as err:  # any failure: the key comes back after its backoff
                self._on_error(key, err, self.queue.retry(key))
            else:
                self.queue.succeeded(key)
            finally:
                self.queue.done(key)


class Resync:
    """Adds every known key to the queue every ``period`` seconds, spread over the period.

    Watches deliver every change of every child kind; the resync is the safety net for what a watch can
    miss (a dropped connection, an event lost between a relist and a restart) and re-tries what is
    retried by time alone (an API that was absent may now be served). Spreading the keys over the period
    keeps 1,000 services from all reconciling in the same second.
    """

    def __init__(self, queue: WorkQueue[K], keys: Callable[[], list[K]], *, period: float) -> None:
        self.queue = queue
        self.keys = keys
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resync", daemon=True)

    def start(self) -> None:
        if self.period > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            keys = self.keys()
            step = self.period / max(len(keys), 1)
            for i, key in enumerate(keys):
                self.queue.add(key, after=i * step)
