"""The work queue's guarantees: coalescing, one worker per key, retries with backoff."""

from __future__ import annotations

import threading
import time

from nim_operator.workqueue import Resync, Workers, WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_added_while_waiting_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(50):
        queue.add("a")
    queue.add("b")
    assert queue.get(timeout=0) == "a"
    assert queue.get(timeout=0) == "b"
    assert queue.get(timeout=0) is None


def test_a_key_added_while_processing_comes_back_after_done_not_before() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=0) == "a"
    queue.add("a")
    assert queue.get(timeout=0) is None, "a key must never be handed to two workers at once"
    queue.done("a")
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    assert queue.get(timeout=0) is None


def test_retry_backs_off_exponentially_up_to_the_cap_and_success_resets() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(base_delay=1.0, max_delay=5.0, clock=clock)
    delays = [queue.retry("a") for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert queue.get(timeout=0) is None, "a retried key waits for its delay"
    clock.now += 1.0
    assert queue.get(timeout=0) == "a"
    queue.done("a")
    queue.succeeded("a")
    assert queue.retry("a") == 1.0


def test_forget_drops_delayed_adds_and_backoff() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.retry("gone")
    queue.forget("gone")
    clock.now += 1000
    assert queue.get(timeout=0) is None
    assert queue.failures("gone") == 0


def test_workers_retry_a_failing_key_until_it_succeeds() -> None:
    queue: WorkQueue[str] = WorkQueue(base_delay=0.01, max_delay=0.05)
    attempts: list[str] = []
    errors: list[float] = []
    finished = threading.Event()

    def process(key: str) -> None:
        attempts.append(key)
        if len(attempts) < 4:
            raise RuntimeError("the API server said 500")
        finished.set()

    workers = Workers(queue, process, count=2, on_error=lambda key, err, delay: errors.append(delay))
    workers.start()
    queue.add("flaky")
    assert finished.wait(5)
    workers.stop()
    assert attempts == ["flaky"] * 4
    assert errors == [0.01, 0.02, 0.04]
    assert queue.failures("flaky") == 0


def test_workers_never_process_one_key_concurrently() -> None:
    queue: WorkQueue[int] = WorkQueue()
    active: set[int] = set()
    overlaps: list[int] = []
    processed: list[int] = []
    guard = threading.Lock()

    def process(key: int) -> None:
        with guard:
            if key in active:
                overlaps.append(key)
            active.add(key)
        time.sleep(0.002)
        with guard:
            active.discard(key)
            processed.append(key)

    workers = Workers(queue, process, count=4)
    workers.start()
    for _ in range(30):
        for key in range(3):
            queue.add(key)
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while (len(queue) or active) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    workers.stop()
    assert overlaps == []
    assert set(processed) == {0, 1, 2}
    assert len(processed) < 90, "adds while waiting must coalesce"


def test_resync_adds_every_key_spread_over_the_period() -> None:
    queue: WorkQueue[str] = WorkQueue()
    resync = Resync(queue, lambda: ["a", "b", "c"], period=0.05)
    resync.start()
    seen: set[str] = set()
    deadline = time.monotonic() + 5
    while seen != {"a", "b", "c"} and time.monotonic() < deadline:
        key = queue.get(timeout=0.1)
        if key is not None:
            seen.add(key)
            queue.done(key)
    resync.stop()
    assert seen == {"a", "b", "c"}
