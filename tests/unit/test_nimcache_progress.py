"""Live download progress: what the downloader prints, what the operator reads, what status publishes.

The downloader's half runs for real on real files (a thread measures a folder another thread fills);
the operator's half reads those very lines, so the line format is tested from both ends.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

from nim_operator.api.nimcache import CacheProgress, NIMCacheStatus
from nim_operator.cache_progress import parse_progress
from nim_operator.cache_status import PROGRESS_STEP_PERCENT, compute_cache_status, progress_of, worth_publishing
from nim_runtime.download import ProgressReporter, bytes_on_volume

NOW = "2026-12-03T08:00:00Z"
MIB = 2**20


def test_bytes_on_volume_counts_complete_files_and_partial_downloads(tmp_path: Path) -> None:
    sizes = {"config.json": 100, "model.safetensors": 10 * MIB, "sub/tokenizer.json": 50}
    assert bytes_on_volume(tmp_path, sizes) == (0, 0)
    (tmp_path / "config.json").write_bytes(b"x" * 100)
    # huggingface_hub writes a file under .cache/huggingface/download/ and renames it into place when done.
    partial = tmp_path / ".cache" / "huggingface" / "download"
    partial.mkdir(parents=True)
    (partial / "a1b2.etag.incomplete").write_bytes(b"x" * (3 * MIB))
    assert bytes_on_volume(tmp_path, sizes) == (1, 100 + 3 * MIB)
    (partial / "a1b2.etag.incomplete").rename(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").write_bytes(b"x" * (10 * MIB))
    assert bytes_on_volume(tmp_path, sizes) == (2, 100 + 10 * MIB)


def test_the_reporter_prints_a_line_only_when_the_bytes_moved(tmp_path: Path) -> None:
    sizes = {"a.bin": 4 * MIB, "b.bin": 4 * MIB}
    out = io.StringIO()

    def fill() -> None:
        for name in sizes:
            with (tmp_path / name).open("wb") as f:
                for _ in range(4):
                    f.write(b"x" * MIB)
                    f.flush()
                    time.sleep(0.05)

    with ProgressReporter(tmp_path, sizes, every=0.02, out=out):
        writer = threading.Thread(target=fill)
        writer.start()
        writer.join()
        time.sleep(0.1)  # several idle periods: no line while nothing moves
    lines = [json.loads(line)["progress"] for line in out.getvalue().splitlines()]
    assert lines[0] == {"files": 0, "totalFiles": 2, "bytes": 0, "totalBytes": 8 * MIB}
    assert lines[-1] == {"files": 2, "totalFiles": 2, "bytes": 8 * MIB, "totalBytes": 8 * MIB}
    done = [line["bytes"] for line in lines]
    assert done == sorted(set(done)), done  # strictly growing: a repeated figure is never printed
    assert len(lines) >= 4  # it did report while the files were arriving


def test_the_operator_reads_the_newest_progress_line_of_a_log_tail() -> None:
    log = "\n".join(
        [
            "downloading 2 files (8.0 MiB) of http://hub/x@main into /model-store",
            json.dumps({"progress": {"files": 0, "totalFiles": 2, "bytes": MIB, "totalBytes": 8 * MIB}}),
            "Fetching 2 files: 50%|#####     | 1/2",
            json.dumps({"progress": {"files": 1, "totalFiles": 2, "bytes": 5 * MIB, "totalBytes": 8 * MIB}}),
            '{"progress": {"files": 1, "totalFiles": 2, "bytes": 6',  # cut off by limitBytes
        ]
    )
    reading = parse_progress(log)
    assert reading == progress_of(files=1, total_files=2, done=5 * MIB, total=8 * MIB)
    assert reading is not None
    assert reading.percent == 62
    assert reading.summary == "62% of 8.0 MiB"
    assert parse_progress("no progress here\n{}\n[1, 2]") is None
    assert parse_progress(json.dumps({"progress": {"files": -1, "totalFiles": 2, "bytes": 1, "totalBytes": 2}})) is None


def _reading(done: int, total: int = 100 * MIB) -> CacheProgress:
    return progress_of(files=0, total_files=3, done=done, total=total)


def test_progress_is_worth_a_write_only_in_steps() -> None:
    first = _reading(0)
    assert worth_publishing(None, first)
    assert not worth_publishing(first, _reading((PROGRESS_STEP_PERCENT - 1) * MIB))
    assert worth_publishing(first, _reading(PROGRESS_STEP_PERCENT * MIB))
    assert worth_publishing(_reading(97 * MIB), _reading(100 * MIB))  # the end is always news
    assert worth_publishing(first, _reading(0, total=200 * MIB))  # a new total is news
    unknown = progress_of(files=0, total_files=None, done=100 * MIB, total=None)
    assert unknown.summary == "100.0 MiB so far"
    assert not worth_publishing(unknown, progress_of(files=0, total_files=None, done=104 * MIB, total=None))


def _job() -> dict[str, object]:
    return {"metadata": {"name": "c-job", "uid": "j"}, "status": {}}


RUNNING = {"metadata": {"name": "c-job-x", "uid": "p", "creationTimestamp": NOW}, "status": {"phase": "Running"}}
PVC = {"metadata": {"name": "c-pvc"}, "status": {"phase": "Bound"}}


def _status(previous: NIMCacheStatus | None, live: CacheProgress | None) -> NIMCacheStatus:
    return compute_cache_status(
        generation=1,
        previous=previous,
        pvc_name="c-pvc",
        pvc=PVC,
        job=_job(),
        pods=[RUNNING],
        failure=None,
        now=NOW,
        live=live,
    )


def test_status_shows_progress_while_downloading_and_costs_no_write_between_steps() -> None:
    started = _status(None, _reading(MIB))
    assert started.state == "InProgress"
    assert started.progress == _reading(MIB)
    assert started.size is None  # the size is the cached model's, known once it is Ready
    # A reading that moved less than a step gives the same status, so the shell writes nothing.
    assert _status(started, _reading(3 * MIB)) == started
    moved = _status(started, _reading(40 * MIB))
    assert moved.progress is not None
    assert moved.progress.percent == 40
    # A reconcile with no reading at hand (a pod event) keeps what was shown.
    assert _status(moved, None) == moved
