"""Live download progress: the newest progress line of each running download, read at a bounded rate.

The download Job's pod has no API access and gets none (its ServiceAccount token is not even mounted).
The downloader prints progress lines (``nim_runtime.download``), and the operator reads the newest one from
a bounded tail of the pod's log (``pods/log`` get), once per interval per running download pod and never
for a finished or waiting one. A reading triggers a reconcile of its NIMCache only when it moved a step
(``cache_status.worth_publishing``), so a download costs a handful of reconciles and status writes.

``parse_progress`` is pure; :class:`ProgressPoller` is the thread that reads the logs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nim_operator.api.nimcache import CacheProgress
from nim_operator.cache_status import progress_of, worth_publishing
from nim_operator.kube import Kube
from nim_runtime.download import PROGRESS_KEY

log = logging.getLogger(__name__)

#: How much of the log one read fetches: the downloader prints little besides its progress lines.
TAIL_LINES = 8
TAIL_BYTES = 16384
#: Seconds one log read may take: a kubelet that cannot be reached must not stall the poller for the
#: kernel's connect timeout (the readings of the other downloads wait behind it).
LOG_TIMEOUT_S = 10.0

Key = tuple[str, str]


@dataclass(frozen=True)
class Downloading:
    """A running download pod: the NIMCache it fills, and which pod and container to read."""

    key: Key
    pod: str
    uid: str
    container: str


def parse_progress(text: str) -> CacheProgress | None:
    """The newest progress line of a log tail, or None when it holds none (or only a cut-off one)."""
    for line in reversed(text.splitlines()):
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if not isinstance(parsed, dict) or not isinstance(parsed.get(PROGRESS_KEY), dict):
            continue
        said = parsed[PROGRESS_KEY]
        numbers = [said.get(k) for k in ("files", "totalFiles", "bytes", "totalBytes")]
        if not all(isinstance(n, int) and n >= 0 for n in numbers):
            continue
        files, total_files, done, total = (int(n) for n in numbers)
        return progress_of(files=files, total_files=total_files, done=done, total=total)
    return None


class ProgressPoller:
    """Reads the running downloads' logs every ``interval`` seconds; ``trigger`` gets caches whose reading
    changed. ``running`` lists the downloads to read (the cache reconciler knows them from its watches)."""

    def __init__(
        self,
        kube: Kube,
        running: Callable[[], Iterable[Downloading]],
        trigger: Callable[[Key], None],
        *,
        interval: float,
    ) -> None:
        self.kube = kube
        self.running = running
        self.trigger = trigger
        self.interval = interval
        self._readings: dict[Key, tuple[str, CacheProgress]] = {}
        # The reading of each cache when it last triggered a reconcile.
        self._triggered: dict[Key, tuple[str, CacheProgress]] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reading(self, key: Key, uids: Iterable[str]) -> CacheProgress | None:
        """The newest reading of this cache, if it is of one of these pods (the current Job's)."""
        with self._guard:
            found = self._readings.get(key)
        return found[1] if found is not None and found[0] in set(uids) else None

    def forget(self, key: Key) -> None:
        with self._guard:
            self._readings.pop(key, None)
            self._triggered.pop(key, None)

    def poll_once(self) -> list[Key]:
        """Read every running download once; the caches whose reading moved a step (each triggered)."""
        changed = []
        for download in self.running():
            try:
                text = self.kube.pod_log(
                    download.key[0],
                    download.pod,
                    download.container,
                    limit_bytes=TAIL_BYTES,
                    timeout=LOG_TIMEOUT_S,
                    tail_lines=TAIL_LINES,
                )
            except Exception as err:  # a pod that just ended, a node that serves no logs: try next time
                log.debug("no progress from pod %s/%s: %s", download.key[0], download.pod, err)
                continue
            reading = parse_progress(text)
            if reading is None:
                continue
            with self._guard:
                self._readings[download.key] = (download.uid, reading)
                before = self._triggered.get(download.key)
                moved = before is None or before[0] != download.uid or worth_publishing(before[1], reading)
                if moved:
                    self._triggered[download.key] = (download.uid, reading)
            if moved:
                changed.append(download.key)
        for key in changed:
            try:
                self.trigger(key)
            except Exception:  # the cache's own handlers retry; the poller must keep polling
                log.exception("reconciling NIMCache %s/%s after a progress reading failed", *key)
        return changed

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nimcache-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()
