"""The probe door: health probes answered on a thread of their own, every other request on the event loop.

Why: py-spy on the API process under 32 streams shows its event loop spending several milliseconds after
every engine step in vLLM's output handler and the streams' chunk writes (0.2 ms of front-end CPU per
output token, 32 tokens a step). A probe that arrives meanwhile waits for all of it: p99 13.8 ms
against our 5 ms target, although the route itself takes microseconds. Making the chunks cheaper moves
that wait, it cannot remove it; answering where the streams are not does.

So the door owns the listening sockets. Its thread accepts every connection and looks at the first
request. A plain ``GET /v1/health/live`` or ``/v1/health/ready`` (no body, no upgrade, no CORS ``Origin``)
is answered right there, with the answer the routes give (:func:`nim_runtime.health.health_answer`, which
reads flags), as many times as the client asks on that connection. Anything else, from its first byte
on, is handed with the bytes already read to uvicorn on the event loop (``loop.connect_accepted_socket``),
which serves the rest of that connection as if it had accepted it. The kubelet opens a new connection for
every probe, so every probe it sends is answered here; a client that sends a probe on a connection that
already carried an inference request is answered by the route instead, the same way.

What keeps the answers true: the event loop reports every turn of uvicorn's tick (ten a second, see
:meth:`ProbeDoor.loop_turned`); when it has not turned for ``LOOP_STALL_SECONDS``, both probes answer 503,
as a probe served by a wedged loop would have failed. During a drain every answer closes its connection,
as the middleware does for the loop's answers. Probes are counted in the same request metrics.

What still delays an answer: the thread needs the GIL, which a busy event loop gives up only every
``sys.getswitchinterval()`` seconds, and it takes it several times per probe (accept, read, send); the
server lowers that interval (see :mod:`nim_runtime.server`). A long C call holding the GIL (parsing a huge
JSON body) still delays a probe, as it delays everything else in the process.

Not used with TLS (vLLM's ``--ssl-*`` options): the handshake would happen on this thread, and an
established TLS session cannot be handed to the event loop. The loop then answers the probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from nim_runtime.health import LOOP_STALL_SECONDS, PROBE_PATHS, health_answer
from nim_runtime.lifecycle import Lifecycle, Phase
from nim_runtime.metrics import RuntimeMetrics

logger = logging.getLogger(__name__)

#: A probe's request head is a few hundred bytes; a longer one is not a probe (uvicorn gets it).
MAX_HEAD_BYTES = 8192
#: Seconds an idle connection (or one sending a probe's head this slowly) is kept: uvicorn's keep-alive.
KEEP_ALIVE_SECONDS = 5.0
#: Seconds the kernel holds a new connection that has sent nothing before handing it to accept() anyway.
DEFER_ACCEPT_SECONDS = 5
#: Seconds the thread sleeps at most between sweeps for idle connections.
SWEEP_SECONDS = 1.0
_PREFIX = b"GET /v1/health/"
#: Headers that make a probe something the app must answer (a body, a protocol switch, CORS).
_NOT_A_PROBE = frozenset({"transfer-encoding", "expect", "upgrade", "origin"})
_REASONS = {200: "OK", 503: "Service Unavailable"}


class Verdict(enum.Enum):
    NEED_MORE = "need more bytes"
    HAND_OFF = "not a probe"


@dataclass(frozen=True)
class Probe:
    """A health probe at the start of a connection's buffer."""

    path: str
    #: The client asked for the connection to end after the answer (or spoke HTTP/1.0 without keep-alive).
    close: bool
    #: Bytes of the request head, blank line included: where the next request starts.
    length: int


def classify(buffer: bytes) -> Probe | Verdict:
    """Whether ``buffer`` (what a connection has sent and nobody has answered) starts with a health probe.

    Conservative: anything unusual is handed to uvicorn, whose parser answers it as it always did.
    """
    if buffer[: len(_PREFIX)] != _PREFIX[: len(buffer)]:
        return Verdict.HAND_OFF
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return Verdict.HAND_OFF if len(buffer) >= MAX_HEAD_BYTES else Verdict.NEED_MORE
    request_line, *header_lines = buffer[:end].decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return Verdict.HAND_OFF
    path = parts[1].partition("?")[0]
    if path not in PROBE_PATHS:
        return Verdict.HAND_OFF
    keep_alive = parts[2] == "HTTP/1.1"
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():  # no colon, obsolete folding, space before ":"
            return Verdict.HAND_OFF
        name, value = name.lower(), value.strip().lower()
        if name in _NOT_A_PROBE or (name == "content-length" and value != "0"):
            return Verdict.HAND_OFF
        if name == "connection":
            tokens = {token.strip() for token in value.split(",")}
            keep_alive = "close" not in tokens and (keep_alive or "keep-alive" in tokens)
    return Probe(path=path, close=not keep_alive, length=end + 4)


def render(status: int, body: dict[str, str], *, close: bool) -> bytes:
    """The HTTP/1.1 answer, with the JSON bytes Starlette's JSONResponse would send."""
    payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
        f"date: {formatdate(usegmt=True)}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
    ]
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


def bind_listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host``:``port`` as asyncio's ``create_server`` makes them (one per address,
    ``SO_REUSEADDR``, IPv6 sockets IPv6-only); raises OSError when the port cannot be had."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "TCP_DEFER_ACCEPT") and family in (socket.AF_INET, socket.AF_INET6):
                # accept() returns once the request is there, so the door wakes once per probe, not twice
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in listeners:
            sock.close()
        raise
    return listeners


@dataclass(eq=False)
class _Held:
    """A connection the door still answers itself, and what it has sent that is not answered yet."""

    sock: socket.socket
    client: tuple[str, int]
    last_active: float
    buffer: bytes = field(default=b"")


ProtocolFactory = Callable[[], asyncio.Protocol]


class ProbeDoor:
    """Accepts on ``listeners``, answers probes on its own thread, hands everything else to ``loop``."""

    def __init__(
        self,
        listeners: list[socket.socket],
        lifecycle: Lifecycle,
        metrics: RuntimeMetrics,
        *,
        stall_seconds: float = LOOP_STALL_SECONDS,
    ) -> None:
        self.listeners = listeners
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.stall_seconds = stall_seconds
        self._held: dict[int, _Held] = {}
        self._last_turn = time.monotonic()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol_factory: ProtocolFactory | None = None

    def open(self, loop: asyncio.AbstractEventLoop, protocol_factory: ProtocolFactory) -> None:
        """Start accepting; connections that are not probes go to ``protocol_factory()``'s protocol on ``loop``."""
        self._loop, self._protocol_factory = loop, protocol_factory
        self._last_turn = time.monotonic()
        for listener in self.listeners:
            self._selector.register(listener, selectors.EVENT_READ, None)
        self._wake_read.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, self._wake_read)
        self._thread = threading.Thread(target=self._run, name="nim-probe-door", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop accepting and close the listeners and the connections the door still holds."""
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        self._thread.join(timeout=5)

    def loop_turned(self) -> None:
        """Called on the event loop at each turn of uvicorn's tick: the loop is not wedged."""
        self._last_turn = time.monotonic()

    def clients(self) -> list[tuple[str, int]]:
        """Peer addresses of the connections the door holds (open connections, for the drain)."""
        return [held.client for held in list(self._held.values())]

    def _run(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._selector.select(timeout=SWEEP_SECONDS):
                    if key.data is None:
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                    elif isinstance(key.data, _Held):
                        self._read(key.data)
                self._sweep(time.monotonic() - KEEP_ALIVE_SECONDS)
        except Exception:  # the server cannot accept anything without this thread: say so loudly
            logger.exception("The probe door failed; the server accepts no more connections")
        finally:
            for held in list(self._held.values()):
                self._drop(held)
            for sock in (*self.listeners, self._wake_read, self._wake_write):
                sock.close()
            self._selector.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, or the peer gave up: the next select retries
                logger.warning("accept() failed: %s", exc)
                return
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # an answer is one small write
            held = _Held(sock=sock, client=(str(address[0]), int(address[1])), last_active=time.monotonic())
            self._held[sock.fileno()] = held
            self._selector.register(sock, selectors.EVENT_READ, held)
            self._read(held)  # the request is usually there already (TCP_DEFER_ACCEPT): answer it now

    def _read(self, held: _Held) -> None:
        try:
            data = held.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(held)
            return
        held.buffer += data
        held.last_active = time.monotonic()
        self._answer(held)

    def _answer(self, held: _Held) -> None:
        """Answer every complete probe in the buffer; hand the connection off at the first non-probe."""
        while held.buffer:
            verdict = classify(held.buffer)
            if verdict is Verdict.NEED_MORE:
                return
            if not isinstance(verdict, Probe):
                self._hand_off(held)
                return
            started = time.perf_counter()
            stalled = time.monotonic() - self._last_turn
            stalled_for = stalled if stalled >= self.stall_seconds else None
            status, body = health_answer(verdict.path, self.lifecycle, loop_stalled_for=stalled_for)
            close = verdict.close or self.lifecycle.phase is Phase.DRAINING
            held.buffer = held.buffer[verdict.length :]
            try:
                held.sock.sendall(render(status, body, close=close))
            except OSError:  # gone, or not reading while it piles up requests: not a probe worth keeping
                self._drop(held)
                return
            self.metrics.observe(verdict.path, "GET", status, time.perf_counter() - started)
            if close:
                self._drop(held)
                return

    def _hand_off(self, held: _Held) -> None:
        self._forget(held)
        loop = self._loop
        if loop is None or loop.is_closed() or self._stopping:
            held.sock.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._adopt(held.sock, held.buffer), loop)
        except RuntimeError:  # the loop closed in between
            held.sock.close()

    async def _adopt(self, sock: socket.socket, prefix: bytes) -> None:
        """On the event loop: uvicorn's protocol takes the connection, reading ``prefix`` first."""
        assert self._protocol_factory is not None
        factory = self._protocol_factory
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: primed(factory(), prefix), sock)
        except Exception as exc:  # the client went away meanwhile
            logger.debug("Handing a connection to the event loop failed: %s", exc)
            sock.close()

    def _sweep(self, idle_since: float) -> None:
        for held in list(self._held.values()):
            if held.last_active < idle_since:
                self._drop(held)

    def _forget(self, held: _Held) -> None:
        self._held.pop(held.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(held.sock)

    def _drop(self, held: _Held) -> None:
        self._forget(held)
        held.sock.close()


def primed(protocol: asyncio.Protocol, prefix: bytes) -> asyncio.Protocol:
    """``protocol``, made to receive ``prefix`` right after its connection is made, before any later read."""
    if not prefix:
        return protocol
    made = protocol.connection_made

    def connection_made(transport: asyncio.BaseTransport) -> None:
        made(transport)
        protocol.data_received(prefix)

    protocol.connection_made = connection_made  # type: ignore[method-assign]
    return protocol
