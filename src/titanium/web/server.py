"""uvicorn's httptools protocol with limits on the request head it does not have.

httptools (llhttp) buffers a header of any size, and uvicorn arms no timer until
the first response is sent, so one 50 MB header or thousands of connections that
trickle their request line were all kept. This is the guard Node.js puts around
the same parser (`--max-http-header-size`, `headersTimeout`): count the bytes and
lines of the head and give it a deadline. It plugs in where uvicorn takes a
protocol class (`uvicorn.run(http=...)`) and overrides only parser callbacks.
"""

import asyncio
import http
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from titanium.config import Settings


def _refusal(status: int, message: str) -> bytes:
    # The error shape of every Titanium answer (decision 10), written by hand: no
    # ASGI app runs for a request whose head was never complete.
    body = json.dumps({"status": "failed", "message": message, "detail": message}).encode()
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _HeadRefused(Exception):
    """Raised from a parser callback to make httptools stop parsing.

    It reaches uvicorn as httptools.HttpParserCallbackError, which uvicorn answers
    with a 400 (skipped below: the 431 has been sent already).
    """


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size, line-count and time limit on each request head."""

    max_head_bytes = 16 * 1024
    max_head_lines = 100
    head_timeout_seconds = 5.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock at once: a connection that never sends a byte is cut off too."""
        super().connection_made(transport)
        self._in_head = True
        self._head_started = False
        self._head_bytes = 0
        self._head_lines = 0
        self._heads_done = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the head timer with the connection."""
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse, then count what went into a still unfinished head."""
        in_head_before = self._in_head
        heads_before = self._heads_done
        super().data_received(data)
        # Only a chunk read inside a head that completed no head is all head bytes:
        # others carry a body or the end of one. So a head is cut off at most one
        # read (256 KiB with uvloop) past the limit, never buffered without end.
        if (
            in_head_before
            and self._heads_done == heads_before
            and self._in_head
            and not self.transport.is_closing()
        ):
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, "request headers too large")

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, unless the head was already refused."""
        if not self.transport.is_closing():
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        """A new request's first byte: its head gets the whole timeout from now."""
        super().on_message_begin()
        self._head_started = True
        self._head_bytes = 0
        self._head_lines = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count header lines; the byte limit is kept in `data_received`."""
        self._head_lines += 1
        if self._head_lines > self.max_head_lines:
            self._refuse(431, "too many request headers")
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: the body and the answer have their own limits."""
        self._in_head = False
        self._heads_done += 1
        self._head_started = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """What arrives next is the next request's head (kept-alive idling is uvicorn's)."""
        super().on_message_complete()
        self._in_head = True

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.head_timeout_seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_started:
            self._refuse(408, "request headers not received in time")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._cancel_head_timer()
        self.logger.warning("refused a request head: %s", message)
        self.transport.write(_refusal(status, message))
        self.transport.close()


def bounded_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for `uvicorn.run(http=...)`, with this process's limits."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_head_bytes": settings.max_header_bytes,
            "max_head_lines": settings.max_header_count,
            "head_timeout_seconds": settings.client_header_timeout_seconds,
        },
    )
