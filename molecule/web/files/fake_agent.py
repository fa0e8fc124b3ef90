#!/usr/bin/env python3
"""Stand-in for the chat agent behind nginx in the web scenario.

GET/POST any path  -> JSON echo of what the upstream received (path, headers, padding for gzip).
.../stream and /v1/chat/completions -> server-sent events: 6 tokens, DELAY seconds apart,
                      chunked, no X-Accel-Buffering header (buffering is nginx's decision alone).
/metrics           -> Prometheus text.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = ["Hello", " from", " the", " fake", " agent", "."]
DELAY = 0.5


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the journal quiet
        pass

    def _send(self, code, body, ctype):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for token in TOKENS:
            self._chunk(("data: %s\n\n" % json.dumps({"token": token, "at": time.time()})).encode())
            time.sleep(DELAY)
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _route(self):
        path = self.path.split("?", 1)[0]
        if path.endswith("/stream") or path == "/v1/chat/completions":
            return self._stream()
        if path == "/metrics":
            return self._send(200, b"chatagent_requests_total 1\n", "text/plain; version=0.0.4")
        body = {"path": self.path, "method": self.command,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "padding": "x" * 1024}
        return self._send(200, json.dumps(body).encode(), "application/json")

    def do_GET(self):
        self._route()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._route()


if __name__ == "__main__":
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
