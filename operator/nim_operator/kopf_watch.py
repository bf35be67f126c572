"""Keep kopf alive when a watched CRD disappears: a workaround, in one place, for kopf 1.45.

The operator watches the kinds of optional integrations (ServiceMonitors, LeaderWorkerSets, Karpenter's
NodePools, Gateway routes ...) whose CRDs may be uninstalled at any time. When that happens, kopf's
CRD observer stops the watcher; but if the watcher asks the API server first (a reconnect, or a watch
opened while a just-created CRD is still initialising and then deleted), it gets a 404, which kopf
treats as fatal for the whole operator: every reconcile of every service stops until a restart.

Here the watch of a vanished resource waits and retries instead, until kopf's observer cancels it (the
CRD is gone for good) or the resource is served again (the CRD came back). Nothing else changes: any
other error still ends the operator, as kopf intends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

#: Seconds between two tries of a watch whose resource is not served.
RETRY_SECONDS = 5.0

_installed = False


def _tolerant(original: Callable[..., AsyncIterator[Any]], not_found: type[Exception]) -> Callable[..., Any]:
    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        while True:
            try:
                async for event in original(**kwargs):
                    yield event
                return
            except not_found:
                log.info(
                    "%s is not served (its CRD was deleted?); retrying until it is or kopf stops the watch",
                    kwargs.get("resource"),
                )
                await asyncio.sleep(RETRY_SECONDS)

    return infinite_watch


def tolerate_vanishing_resources() -> bool:
    """Install the workaround once; False (and a warning) when this kopf has another shape."""
    global _installed
    if _installed:
        return True
    try:
        from kopf._cogs.clients import errors, watching
    except ImportError:
        log.warning("kopf's watching module moved: a deleted CRD may stop the operator until it restarts")
        return False
    original = getattr(watching, "infinite_watch", None)
    not_found = getattr(errors, "APINotFoundError", None)
    if original is None or not isinstance(not_found, type):
        log.warning("kopf's watch has another shape: a deleted CRD may stop the operator until it restarts")
        return False
    watching.infinite_watch = _tolerant(original, not_found)
    _installed = True
    return True
