"""The Gunicorn worker: uvicorn's, except that a response leaves the process in one write.

uvicorn writes the status line and headers when the app sends `http.response.start` and the body
on the next message: two sends. A worker killed between them (SIGKILL, the OOM killer) leaves the
proxy with headers and a short body, which it has already passed on to the client and cannot retry:
the multihost scenario's worker SIGKILL saw it once (IncompleteRead, 0 of 671 bytes). Here the writes
of one event-loop step are joined and sent at the start of the next, so a killed worker has sent a
whole response or nothing, and nothing means nginx retries the request on another worker with the
same X-Request-ID.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class JoinedWritesTransport:
    """A transport whose writes made in one event-loop step go out as one `write`."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        # A graceful close sends what is written first; abort() (delegated) drops it, as it should.
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class JoinedWritesHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a `JoinedWritesTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWritesTransport(transport, self.loop))  # type: ignore[arg-type]


class Worker(UvicornWorker):
    """gunicorn `worker_class = "chatagent.worker.Worker"`: uvloop and httptools, joined writes, and
    no uvicorn access log: the app logs every request itself (`chatagent.access`, with the route and
    request id), and uvicorn's line, sent to gunicorn's access handler, doubled the log volume."""

    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "http": JoinedWritesHttpToolsProtocol,
                                     "access_log": False}
