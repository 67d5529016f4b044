"""What a client may do with a connection before the app sees a request: how long it may take to
send a request's headers and its body, and how many connections may be open at once; and which Host
names the server answers to unless told (api.py's HostCheck refuses the others).

uvicorn's own timeout (`timeout_keep_alive`) covers only the idle time between two requests and
starts again at every byte received, and a connection that has sent nothing yet has none at all; its
`limit_concurrency` answers 503 only once a request's headers are in. So a client that opens
connections and trickles their headers or bodies a byte at a time would hold each one (an open file)
for as long as it likes, until the process runs out of files and nobody else gets an answer.
GuardedHTTP is uvicorn's h11 HTTP protocol (always, even where httptools is installed: one tested
path) with two deadlines per request, and a connection limit applied the moment a connection opens:

- header_timeout: from the connection's start, or from the end of its previous response, until the
  request's headers are complete;
- body_timeout: from the headers until the end of the body;
- max_connections: a connection beyond it gets a 503 and is closed at once.

A connection past a deadline is closed, with a 408 when part of a request had arrived (an idle one
is closed without a word, as uvicorn closes idle keep-alive connections). Neither deadline runs
while a response is being generated or streamed, however long that takes. (The protocol reads
uvicorn's `cycle`, the request being received, and its `more_body`.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from model.serving.api import error_body

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The Host names a server bound to a loopback address answers to by default."""


@dataclass
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open at once."""

    header_timeout: float = 10.0  # Seconds from a connection's start (or its last response) to a request's complete headers.
    body_timeout: float = 30.0  # Seconds from a request's headers to the end of its body.
    max_connections: int = 256  # Connections open at once; one more gets 503 and is closed at once.
    keep_alive_timeout: int = 5  # Seconds an idle connection stays open after a response (uvicorn's timeout_keep_alive).


def default_allowed_hosts(bind_host: str) -> list[str] | None:
    """The Host names to answer to when none are given: bound to a loopback address, only loopback
    names, so that a page on another site that points its own name at this address (DNS rebinding)
    is refused; bound to any other address, every name (None)."""
    if bind_host == "localhost":
        return list(LOOPBACK_HOSTS)
    try:
        loopback = ipaddress.ip_address(bind_host.strip("[]")).is_loopback
    except ValueError:
        return None
    return list(LOOPBACK_HOSTS) if loopback else None


def parse_allowed_hosts(text: str) -> list[str] | None:
    """--allowed_hosts: comma-separated Host names ([::1] or ::1 for IPv6), or * for any (None)."""
    names = [name.strip().lower().strip("[]") for name in text.split(",") if name.strip()]
    return None if "*" in names or not names else names


class GuardedHTTP(H11Protocol):
    """uvicorn's HTTP protocol with the deadlines and the connection limit of the module docstring;
    server_options() makes one for given ConnectionLimits."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline: asyncio.TimerHandle | None = None
        self.request: Any = None  # the request (uvicorn's cycle) whose headers last arrived
        self.receiving_body = False
        self.idle = True  # nothing of the next request has arrived yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.refuse(503, f"the server has {self.limits.max_connections} connections open, its limit; retry shortly")
            return
        self.expect_request()

    def data_received(self, data: bytes) -> None:
        self.idle = False
        super().data_received(data)
        self.watch()

    def on_response_complete(self) -> None:
        self.expect_request()  # first: a request already received (pipelined) starts in super()'s call
        super().on_response_complete()
        self.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def expect_request(self) -> None:
        """Wait for the next request's headers, for at most header_timeout."""
        self.receiving_body, self.idle = False, True
        self.arm(self.limits.header_timeout, "headers")

    def watch(self) -> None:
        """Move on from the headers' deadline to the body's, or to none, as the request arrives."""
        if self.deadline is None or self.cycle is None:
            return
        if self.cycle is not self.request:  # new headers are complete
            self.request = self.cycle
            self.receiving_body = self.cycle.more_body
            if self.receiving_body:
                self.arm(self.limits.body_timeout, "body")
            else:
                self.disarm()
        elif self.receiving_body and not self.cycle.more_body:
            self.receiving_body = False
            self.disarm()

    def arm(self, seconds: float, part: str) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(seconds, self.expire, seconds, part)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def expire(self, seconds: float, part: str) -> None:
        self.deadline = None
        if self.idle:
            self.transport.close()
        else:
            self.refuse(408, f"the request's {part} did not arrive within {seconds:g} s")

    def refuse(self, status: int, message: str) -> None:
        """Answer with a JSON error and close the connection (a request may be half received, so
        the answer is written as it is: no request is left to answer in the usual way)."""
        if self.transport.is_closing():
            return
        body = json.dumps(error_body(status, message)).encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()


def server_options(limits: ConnectionLimits) -> dict[str, Any]:
    """uvicorn.run's (and uvicorn.Config's) keyword arguments that apply `limits`."""
    protocol = type("GuardedHTTP", (GuardedHTTP,), {"limits": limits})
    return {"http": protocol, "timeout_keep_alive": limits.keep_alive_timeout}
