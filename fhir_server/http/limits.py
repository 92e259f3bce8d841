"""Bounds on what one HTTP client can hold: the size of a request's head, the time
it takes to send it, and how long its body may stall.

uvicorn's httptools protocol has none of these. httptools gathers a header field
in memory until the field ends, and uvicorn gathers the request target the same
way, so one connection sending an endless header grows the server without bound;
and a client that stops sending in the middle of a request is waited for for ever.
``BoundedHttpToolsProtocol`` adds, per connection (RFC 9112 §2.3, RFC 9110 §15.5.9,
RFC 6585 §5):

- **Head size.** The bytes of a request's head (request line and header
  section) are counted as they arrive, before the parser sees them; the parser is
  never given more than ``header_bytes`` of one head. A head that does not end
  within them is answered 431 and the connection closed. Trailer fields after a
  chunked body, which httptools gathers in memory the same way, are held to the
  same bound. (A pipelined head that arrives in the read that ended the request
  before it is counted from the next read: at most one read more.)
- **Head time.** A head must be complete ``header_timeout`` seconds after its
  first byte, or after the connection opened if it is the first. A head begun
  and not finished is answered 408; a connection that sent nothing is closed.
  The pause between requests on a kept-alive connection is uvicorn's
  ``timeout_keep_alive``, not this.
- **Body idleness.** While a request body is arriving, ``body_timeout`` seconds
  without a byte end the request: 408 if no response has begun, else the
  connection is closed; what the app reads next is ``http.disconnect``. Only
  the client's silence counts: the clock does not run while uvicorn's flow
  control holds reading back because the app has not read what came, nor before
  the app has asked for a body sent with ``Expect: 100-continue``, and it
  restarts when the app asks for more. A large upload arriving steadily for
  minutes is never cut.

These answers carry the CORS header the app's own would (``cors_origins``, as
``app.cors_options`` reads them: none configured means any origin), from the
``Origin`` field if it arrived before the refusal: a browser shows an answer
without it to the page as a network error, not as the 408 or 431 it is.

An answered connection is closed in stages (RFC 9112 §9.6): the response, then
the end of our side, then what the client still sends is read and dropped for
``LINGER`` seconds or until it closes. Closing at once, with unread bytes
waiting, would reset the connection and the client might never read the answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from fhir_server.http.broken_off import BreakingOffHttpToolsProtocol

LINGER = 2.0  # seconds an answered connection reads and drops input before it closes


@dataclass(frozen=True)
class HttpLimits:
    """Per-request bounds of the HTTP listener (the defaults, and why: ``Settings``)."""

    header_bytes: int
    header_timeout: float
    body_timeout: float
    cors_origins: tuple[str, ...] = ()  # origins allowed to read the answers; () is any


def cors_fields(origin: bytes | None, allowed: tuple[str, ...]) -> list[tuple[bytes, bytes]]:
    """The CORS header fields of an answer to a request from ``origin`` (pure)."""
    if not allowed or "*" in allowed:  # as CORSMiddleware reads allow_origins=["*"]
        return [(b"access-control-allow-origin", b"*")]
    if origin is not None and origin.decode("latin-1") in allowed:
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    return []


class _WatchedFlow(FlowControl):
    """uvicorn's flow control, telling the protocol each time the app asks to read
    (``receive`` resumes reading), whether or not reading was paused."""

    def __init__(self, transport: asyncio.Transport, on_read: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_read = on_read

    def resume_reading(self) -> None:
        super().resume_reading()
        self._on_read()


def _answer(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete plain-text response that closes the connection."""
    body = HTTPStatus(status).phrase.encode()
    fields = [*headers, (b"content-type", b"text/plain; charset=utf-8")]
    fields += [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
    lines = [name + b": " + value + b"\r\n" for name, value in fields]
    return b"".join([STATUS_LINE[status], *lines, b"\r\n", body])


def bounded_protocol(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, holding to ``limits``."""
    configured = limits

    class Bounded(BoundedHttpToolsProtocol):
        limits = configured

    return Bounded


class BoundedHttpToolsProtocol(BreakingOffHttpToolsProtocol):
    """radhub's HTTP/1.1 protocol: coalesced writes, quiet break-offs (``broken_off``),
    and the bounds above."""

    limits: ClassVar[HttpLimits]  # given by bounded_protocol

    # per connection, set in connection_made
    _in_head: bool  # the parser is in a request's head, or waits for one
    _head_bytes: int  # bytes of this head given to the parser
    _begun: bool  # this head has begun (so a timeout is answered, not just closed)
    _unframed: int  # body-phase bytes given to the parser since the last body bytes
    _since: float | None  # when the client's current allowance of time began; None: none runs
    _lingering: bool
    _watchdog: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _WatchedFlow(self.transport, self._app_reads)
        self._in_head, self._head_bytes, self._begun, self._unframed = True, 0, False, 0
        self._since, self._lingering, self._watchdog = self.loop.time(), False, None
        self._arm(self._since + self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        if not self._in_head:
            self._since = self.loop.time()
            self._unframed += len(data)
            super().data_received(data)
            if not self._in_head and self._unframed > self.limits.header_bytes:
                self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)  # trailer fields
            return
        room = self.limits.header_bytes - self._head_bytes
        self._head_bytes += min(len(data), room)  # before feeding: a head ending here resets it
        if len(data) <= room:
            super().data_received(data)
            return
        if room:
            super().data_received(data[:room])
        if self._in_head and self._head_bytes == self.limits.header_bytes:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        elif not self._let_go():
            self.data_received(data[room:])  # a body, or the next request

    # parser callbacks (httptools calls them while data_received feeds it)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._since is None:
            self._since = self.loop.time()
            self._arm(self._since + self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head, self._unframed, self._since = False, 0, self.loop.time()
        self._arm(self._since + self.limits.body_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._unframed = 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._begun, self._since = True, 0, False, None

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol owns the connection from here
        self._since = None
        super().handle_websocket_upgrade()

    # timing

    def _app_reads(self) -> None:
        if self._since is not None:
            self._since = self.loop.time()

    def _arm(self, when: float) -> None:
        """Have the watchdog look at the connection at ``when`` or before."""
        watchdog = self._watchdog
        if watchdog is not None:
            if watchdog.when() <= when:
                return
            watchdog.cancel()
        self._watchdog = self.loop.call_at(when, self._watch)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        self._watchdog = None
        if self._since is None:
            return  # nothing is owed by the client; the next head arms it again
        now = self.loop.time()
        if self.flow.read_paused or (not self._in_head and self.cycle.waiting_for_100_continue):
            self._since = now  # we hold the client back, not the other way round
        limit = self.limits.header_timeout if self._in_head else self.limits.body_timeout
        if now < self._since + limit:
            self._arm(self._since + limit)
        elif self._in_head and not self._begun:
            self.transport.close()  # opened and never used: nothing to answer
        else:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT)

    # ending a request

    def _let_go(self) -> bool:
        """This protocol reads the connection no more (refused, closed or upgraded)."""
        transport = self.transport
        return self._lingering or transport.is_closing() or transport.get_protocol() is not self

    def _refuse(self, status: HTTPStatus) -> None:
        """End the request being received: answer ``status`` if it is still this
        request's turn to be answered, then close the connection."""
        if self.transport.is_closing():
            return  # ended already (uvicorn answered a malformed request, say)
        level = logging.INFO if status == HTTPStatus.REQUEST_TIMEOUT else logging.WARNING
        self.logger.log(
            level, "%s - HTTP request refused: %d %s", self.client, status, status.phrase
        )
        cycle = self.cycle
        if self._in_head:  # the cycle, if any, is an earlier request's
            may_answer = cycle is None or cycle.response_complete
        else:  # the cycle is this request's, behind any still queued before it
            may_answer = not cycle.response_started and not self.pipeline
            if not cycle.response_complete:
                cycle.disconnected = True  # the app's next receive is http.disconnect
                cycle.message_event.set()
        self._disarm()
        if not may_answer:
            self.transport.close()
            return
        # the fields parsed so far: this request's (httptools resets them as a head begins)
        origin = next((value for name, value in self.headers or () if name == b"origin"), None)
        cors = cors_fields(origin, self.limits.cors_origins)
        self.transport.write(_answer(status, [*self.server_state.default_headers, *cors]))
        self._linger()

    def _linger(self) -> None:
        """Close our side, drop what still comes for ``LINGER`` seconds, then close."""
        self._lingering = True
        self.flow.resume_reading()
        if not self.transport.can_write_eof():  # TLS: no half-close
            self.transport.close()
            return
        self.transport.write_eof()
        self._watchdog = self.loop.call_later(LINGER, self.transport.close)
