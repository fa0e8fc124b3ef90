"""The gunicorn worker sends a response in one write (chatagent.worker): a worker killed mid-response
has sent all of it or nothing, never headers that the proxy has passed on without their body."""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from chatagent.worker import JoinedWritesHttpToolsProtocol, Worker

BODY = b'{"answer": "' + b"x" * 600 + b'"}'


async def app(scope, receive, send) -> None:  # noqa: ANN001
    await Response(BODY, media_type="application/json")(scope, receive, send)


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:  # noqa: ANN001
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):  # noqa: ANN001, ANN201
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def serve(protocol_class: type[HttpToolsProtocol], request: bytes) -> RecordingTransport:
    config = Config(app=app, http=protocol_class, lifespan="off", access_log=False)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(100):
        await asyncio.sleep(0)
        if transport.writes and transport.writes[-1].endswith(BODY):
            break
    protocol.connection_lost(None)
    return transport


GET = b"GET /api/v1/chat HTTP/1.1\r\nHost: app1\r\n\r\n"


def test_uvicorns_own_protocol_sends_headers_and_body_apart() -> None:
    # Why the worker exists: a kill between these two writes cut a response in the multihost run.
    writes = asyncio.run(serve(HttpToolsProtocol, GET)).writes
    assert len(writes) == 2 and writes[0].startswith(b"HTTP/1.1 200") and writes[1] == BODY


def test_the_worker_sends_a_whole_response_in_one_write() -> None:
    writes = asyncio.run(serve(JoinedWritesHttpToolsProtocol, GET)).writes
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % len(BODY) in head and body == BODY


def test_keep_alive_requests_each_leave_in_one_write() -> None:
    writes = asyncio.run(serve(JoinedWritesHttpToolsProtocol, GET + GET)).writes
    assert [w.count(b"HTTP/1.1 200") for w in writes] == [1] * len(writes)
    assert all(w.endswith(BODY) for w in writes) and len(writes) == 2


def test_a_close_sends_what_was_written_first() -> None:
    async def run() -> RecordingTransport:
        from chatagent.worker import JoinedWritesTransport

        inner = RecordingTransport()
        joined = JoinedWritesTransport(inner, asyncio.get_running_loop())
        joined.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        joined.close()
        await asyncio.sleep(0)
        return inner

    inner = asyncio.run(run())
    assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and inner.closed


def test_the_worker_keeps_uvloop_and_uses_the_joined_protocol() -> None:
    assert Worker.CONFIG_KWARGS == {"loop": "auto", "http": JoinedWritesHttpToolsProtocol, "access_log": False}
