"""``nim-runtime download``: fill a model store from a Hugging Face-compatible hub, for a NIMCache Job.

The operator runs this in the runtime image with the cache's volume at the destination. Its contract with
the operator (which imports the constants below, so both sides read one definition):

- The completion report: on success, the termination message is one JSON object whose ``reason`` is in
  :data:`COMPLETED` (``{"reason": "Downloaded", "files": n, "bytes": n, "revision": sha, ...}``), written
  after the last file and after the marker file (:data:`MARKER`). Nothing else makes a cache Ready: a pod
  that exits 0 without it (a simulated node, a replaced command) did not fill the store.
- Exit codes: :data:`PERMANENT_EXIT_CODES` fail the Job at once (its pod failure policy) instead of
  retrying what cannot succeed; :data:`EXIT_UNREACHABLE` and anything else are retried with back-off. A
  failure's termination message is ``{"reason": ..., "message": ...}``.
- Progress: while files arrive, a line ``{"progress": {"files", "totalFiles", "bytes", "totalBytes"}}`` on
  stdout every :data:`PROGRESS_EVERY_S` seconds when the bytes moved. The Job's pod has no API access;
  the operator reads the newest such line from the pod's log (a bounded tail) while the download runs.

A retried download resumes: files already complete in the destination are not fetched again.
``--seal SOURCE`` writes the report for a store another downloader filled (NGC's ``download-to-cache``
runs before it in the same pod), so NGC caches follow the same contract.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: Written after the last file; its presence means the store is complete for the source it names.
MARKER = ".nim-cache.json"
#: What a model store needs to be served: weights, configs, tokenizers, templates.
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAUTHORIZED = 3
EXIT_NOT_FOUND = 4
EXIT_TOO_SMALL = 5
EXIT_UNREACHABLE = 6
#: Exit codes a retry cannot fix (the operator's Job fails on these without backing off).
PERMANENT_EXIT_CODES = (EXIT_UNAUTHORIZED, EXIT_NOT_FOUND, EXIT_TOO_SMALL)
#: The reasons of a completion report: the store is complete (hub download or NGC seal; catalog conversion).
COMPLETED = ("Downloaded", "Prepared")
#: The key of a progress line, and how often one is printed while the bytes move.
PROGRESS_KEY = "progress"
PROGRESS_EVERY_S = 2.0
#: Where huggingface_hub keeps a file while it arrives in a ``local_dir`` (renamed into place when complete).
_PARTIAL_DIR = Path(".cache") / "huggingface" / "download"


class DownloadError(Exception):
    """A download that cannot complete: ``reason`` is one CamelCase word, ``code`` the exit status."""

    def __init__(self, reason: str, code: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class HubSource:
    """One repository of a hub: ``endpoint`` is the hub's base URL (``HF_ENDPOINT``)."""

    endpoint: str
    repo_id: str
    revision: str = "main"
    repo_type: str = "model"

    @property
    def uri(self) -> str:
        return f"{self.endpoint.rstrip('/')}/{self.repo_id}@{self.revision}"


def _classify(exc: BaseException, source: HubSource) -> DownloadError:
    """Map a hub client failure onto the reasons status shows; the message says what to check."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{source.repo_type} {source.repo_id} at {source.endpoint}"
    if isinstance(exc, GatedRepoError):
        return DownloadError(
            "Unauthorized", EXIT_UNAUTHORIZED, f"{where} is gated: the authSecret's HF_TOKEN has no access"
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError("NotFound", EXIT_NOT_FOUND, f"{where} has no revision {source.revision!r}")
    if isinstance(exc, RepositoryNotFoundError):
        # Hubs answer 401 for a repository that does not exist as for a private one.
        return DownloadError(
            "NotFound", EXIT_NOT_FOUND, f"{where} does not exist (or is private: check the authSecret's HF_TOKEN)"
        )
    if isinstance(exc, EntryNotFoundError):
        return DownloadError("NotFound", EXIT_NOT_FOUND, f"{where}: {exc}")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return DownloadError("Unauthorized", EXIT_UNAUTHORIZED, f"{where} refused the token ({status})")
        if status is not None and status >= 500:
            return DownloadError("Unreachable", EXIT_UNREACHABLE, f"{where} answered {status}")
        return DownloadError("DownloadFailed", EXIT_FAILED, f"{where}: {str(exc).splitlines()[0]}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DownloadError("TooSmall", EXIT_TOO_SMALL, f"the volume filled up while downloading {where}")
    name = type(exc).__name__
    if any(word in name for word in ("Connect", "Timeout", "Network", "Transport")) or isinstance(
        exc, ConnectionError | TimeoutError
    ):
        return DownloadError("Unreachable", EXIT_UNREACHABLE, f"cannot reach {source.endpoint}: {exc}")
    return DownloadError("DownloadFailed", EXIT_FAILED, f"{where}: {name}: {exc}")


def _repo_files(api: Any, source: HubSource, patterns: Sequence[str]) -> tuple[str, dict[str, int | None]]:
    """The revision's commit and its files that match ``patterns``, with sizes where the hub says them."""
    from fnmatch import fnmatch

    info = api.repo_info(source.repo_id, revision=source.revision, repo_type=source.repo_type, files_metadata=True)
    files = {
        s.rfilename: s.size
        for s in info.siblings or []
        if source.repo_type != "model" or any(fnmatch(s.rfilename, p) for p in patterns)
    }
    return str(info.sha or source.revision), files


def _sizes(source: HubSource, revision: str, files: dict[str, int | None], token: str | None) -> dict[str, int]:
    """Every file's size; those the listing left out are asked for one by one (a HEAD each)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    sizes = {}
    for name, size in files.items():
        if size is None:
            url = hf_hub_url(
                source.repo_id, name, revision=revision, repo_type=source.repo_type, endpoint=source.endpoint
            )
            size = get_hf_file_metadata(url, token=token).size or 0
        sizes[name] = size
    return sizes


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # absent, or renamed between listing and stat: the downloader moved on
        return None


def bytes_on_volume(dest: Path, sizes: Mapping[str, int]) -> tuple[int, int]:
    """(files complete, bytes written) of the expected files in ``dest``, counting partial downloads.

    An estimate for progress only (a file of an older revision with the same name counts as done until it
    is replaced); the completion report carries the exact figures.
    """
    complete = written = 0
    for name, size in sizes.items():
        have = _size_of(dest / name)
        if have is not None:
            complete += have >= size
            written += min(have, size)
    partial = dest / _PARTIAL_DIR
    if partial.is_dir():
        written += sum(_size_of(f) or 0 for f in partial.rglob("*.incomplete"))
    return complete, min(written, sum(sizes.values()))


class ProgressReporter:
    """Prints a progress line every ``every`` seconds while the bytes on the volume move (a thread)."""

    def __init__(
        self, dest: Path, sizes: Mapping[str, int], *, every: float = PROGRESS_EVERY_S, out: IO[str] | None = None
    ) -> None:
        self.dest = dest
        self.sizes = dict(sizes)
        self.every = every
        self.out = out or sys.stdout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)
        self._last: tuple[int, int] | None = None

    def __enter__(self) -> ProgressReporter:
        self.report()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.report()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.report()

    def report(self) -> None:
        """One line, if the figures changed since the last one."""
        files, written = bytes_on_volume(self.dest, self.sizes)
        if (files, written) == self._last:
            return
        self._last = (files, written)
        line = {"files": files, "totalFiles": len(self.sizes), "bytes": written, "totalBytes": sum(self.sizes.values())}
        print(json.dumps({PROGRESS_KEY: line}), file=self.out, flush=True)


def download(
    source: HubSource, dest: Path, *, capacity_bytes: int | None = None, token: str | None = None
) -> dict[str, Any]:
    """Download ``source`` into ``dest`` (resuming), check that it fits first, and mark it complete.

    ``capacity_bytes`` is the size the volume was asked for: provisioners such as local-path do not
    enforce it, so without this check a cache that should not fit would fill the node's disk.
    """
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=source.endpoint, token=token)
    patterns = MODEL_PATTERNS
    try:
        revision, files = _repo_files(api, source, patterns)
        if not files:
            raise DownloadError(
                "NotFound", EXIT_NOT_FOUND, f"{source.uri} holds no model files ({', '.join(patterns)})"
            )
        sizes = _sizes(source, revision, files, token)
    except DownloadError:
        raise
    except Exception as exc:
        raise _classify(exc, source) from exc
    total = sum(sizes.values())
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).unlink(missing_ok=True)
    have = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file() and ".cache" not in f.parts)
    free = shutil.disk_usage(dest).free + have
    room = min(free, capacity_bytes) if capacity_bytes else free
    if total > room:
        raise DownloadError(
            "TooSmall",
            EXIT_TOO_SMALL,
            f"{source.uri} needs {_gib(total)} but the volume has room for {_gib(room)}: raise storage.pvc.size",
        )
    print(f"downloading {len(files)} files ({_gib(total)}) of {source.uri} into {dest}", flush=True)
    try:
        with ProgressReporter(dest, sizes):
            snapshot_download(
                source.repo_id,
                revision=revision,
                repo_type=source.repo_type,
                local_dir=dest,
                allow_patterns=list(files),
                token=token,
                endpoint=source.endpoint,
            )
    except Exception as exc:
        raise _classify(exc, source) from exc
    summary = {"reason": "Downloaded", "source": source.uri, "revision": revision, "files": len(files), "bytes": total}
    return _mark_complete(dest, summary)


def _mark_complete(dest: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write the marker (atomically, last of all files) and return the completion report."""
    summary = {**summary, "completedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    tmp = dest / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(summary) + "\n")
    tmp.rename(dest / MARKER)
    return summary


def seal(dest: Path, source: str) -> dict[str, Any]:
    """The completion report for a store another downloader filled (it exited 0 before this runs).

    NGC's ``download-to-cache`` leaves no report of its own; an empty store means it fetched nothing
    (no profile matched), which a retry will not change.
    """
    (dest / MARKER).unlink(missing_ok=True)
    files = [f for f in dest.rglob("*") if f.is_file() and f.name != f"{MARKER}.tmp"]
    if not files:
        raise DownloadError(
            "NotFound",
            EXIT_NOT_FOUND,
            f"{source} wrote no files into {dest}: check spec.source.ngc.model (no profile may match it)",
        )
    summary = {
        "reason": "Downloaded",
        "source": source,
        "files": len(files),
        "bytes": sum(_size_of(f) or 0 for f in files),
    }
    return _mark_complete(dest, summary)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _terminate(path: str | None, payload: dict[str, Any]) -> None:
    """The termination message: what the operator reads from the finished pod (at most 4 KiB)."""
    text = json.dumps(payload)[:4000]
    print(text, flush=True)
    if path:
        # Outside Kubernetes there is no termination log: stdout said it.
        with contextlib.suppress(OSError):
            Path(path).write_text(text)


def prepare_catalog(name: str, dest: Path) -> dict[str, Any]:
    """A catalog model into ``dest``: embedded ones converted there, hub ones downloaded from their hub."""
    from nim_runtime.profiles import find_manifest, load_catalog
    from nim_runtime.sources import convert_smollm2, resolve_source

    manifest = find_manifest(name)
    if manifest is None:
        raise DownloadError(
            "NotFound", EXIT_NOT_FOUND, f"unknown catalog model {name!r}; catalog: {', '.join(load_catalog())}"
        )
    if manifest.source.startswith("hf://"):
        repo, _, revision = manifest.source[len("hf://") :].partition("@")
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return download(HubSource(endpoint, repo, revision or "main"), dest, token=os.environ.get("HF_TOKEN") or None)
    resolved = resolve_source(manifest.source, dest)
    if resolved.needs_conversion:
        convert_smollm2(resolved.path)
    files = [f for f in resolved.path.rglob("*") if f.is_file()]
    summary = {
        "reason": "Prepared",
        "source": manifest.source,
        "files": len(files),
        "bytes": sum(_size_of(f) or 0 for f in files),
    }
    return _mark_complete(dest, summary)


def main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="nim-runtime download", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--repo", help="org/name of the repository")
    what.add_argument("--catalog", help="a model of the runtime's catalog (embedded ones are converted)")
    what.add_argument("--seal", metavar="SOURCE", help="report a store another downloader filled (NGC's)")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--repo-type", default="model", choices=["model", "dataset"])
    parser.add_argument("--dest", default=os.environ.get("NIM_CACHE_PATH") or "/model-store")
    parser.add_argument("--capacity-bytes", type=int, default=None, help="the volume's requested size")
    parser.add_argument("--termination-log", default=os.environ.get("NIM_TERMINATION_LOG", "/dev/termination-log"))
    options = parser.parse_args(list(argv))
    source = HubSource(
        options.endpoint, options.repo or options.catalog or options.seal, options.revision, options.repo_type
    )
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
    try:
        if options.seal:
            summary = seal(Path(options.dest), options.seal)
        elif options.catalog:
            summary = prepare_catalog(options.catalog, Path(options.dest))
        else:
            summary = download(source, Path(options.dest), capacity_bytes=options.capacity_bytes, token=token)
    except DownloadError as exc:
        _terminate(options.termination_log, {"reason": exc.reason, "message": str(exc)})
        return exc.code
    except OSError as exc:
        err = _classify(exc, source)
        _terminate(options.termination_log, {"reason": err.reason, "message": str(err)})
        return err.code
    _terminate(options.termination_log, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
