#!/usr/bin/env python3
"""Test receiver for Alertmanager: a webhook endpoint (POST, JSON) and a minimal SMTP sink. Every
notification is kept with the time it arrived; GET / returns them all as a JSON list.
Usage: webhook-receiver HTTP_PORT SMTP_PORT. Standard library only."""

import json
import socketserver
import sys
import threading
import time
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received: list[dict] = []
lock = threading.Lock()


def keep(entry: dict) -> None:
    entry["received_at"] = time.time()
    with lock:
        received.append(entry)
    print(json.dumps({k: v for k, v in entry.items() if k != "payload"}), flush=True)


class Webhook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        keep({"via": "webhook", "status": payload.get("status"),
              "alertname": payload.get("commonLabels", {}).get("alertname"), "payload": payload})
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        with lock:
            data = json.dumps(received).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # one line per notification is printed by keep()
        pass


class Smtp(socketserver.StreamRequestHandler):
    """Just enough SMTP for Alertmanager's client: no TLS, no AUTH, one message per session."""

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 receiver ESMTP")
        while line := self.rfile.readline():
            verb = line.decode(errors="replace").strip().split(" ")[0].upper()
            if verb == "EHLO":
                self.reply("250-receiver")
                self.reply("250 8BITMIME")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                body = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    body += chunk[1:] if chunk.startswith(b"..") else chunk
                mail = message_from_bytes(body)
                subject = str(mail.get("Subject", ""))
                keep({"via": "email", "to": mail.get("To"), "subject": subject,
                      "alertname": subject.split("] ", 1)[-1].split(" ")[0],
                      "status": "resolved" if subject.startswith("[RESOLVED]") else "firing"})
                self.reply("250 ok")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                self.reply("250 ok")


if __name__ == "__main__":
    smtp = socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[2])), Smtp)
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Webhook).serve_forever()
