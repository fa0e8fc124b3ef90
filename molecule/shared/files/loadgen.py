#!/usr/bin/env python3
"""Bounded chat load through nginx, counting every response (standard library only).

    loadgen.py run --url https://chat.example.test/api/v1/chat --key KEY [--concurrency 4]
                   [--duration 60] [--max-requests 5000] [--stop-file PATH] [--ids-out PATH]
    loadgen.py check --ids IDS --db ROWS     (ROWS: "request_id<TAB>role" lines from MySQL)

`run` starts N workers, each with one keep-alive HTTPS connection, sending chat turns with a unique
X-Request-ID until the duration, the request count or the stop file is reached. It prints one JSON
object: counts by status, failures with reasons, latency percentiles, and how often the client
retried.

Client retries, as browsers and urllib3 do: when the connection fails before any response byte (a
keep-alive connection the server closed — nginx does so to idle client connections on every
reload — a reset, a TLS EOF), the worker reconnects and sends the same request again with the same
X-Request-ID, at most --attempts times in all. The service answers a request id once (a retry
replays the stored answer), so this cannot store a turn twice. A request counts as failed only if
its last attempt fails: any status but 200, a timeout, or no response at all.

`check` verifies that every answered request id is in MySQL exactly once (one user and one
assistant message) and prints a JSON summary; exit status 1 when not.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

QUESTIONS = [
    "How long does delivery take?",
    "How much does shipping cost?",
    "How do I return an item?",
    "How do I get an invoice?",
    "Can I change my delivery address?",
    "Which payment methods do you accept?",
]
# Errors before any response byte: the request may be sent again on a fresh connection.
RETRYABLE = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError,
             ConnectionAbortedError, BrokenPipeError, ConnectionRefusedError, ssl.SSLEOFError,
             ssl.SSLZeroReturnError)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_status: Counter[str] = Counter()
        self.failures: list[dict] = []
        self.failure_reasons: Counter[str] = Counter()
        self.stopped_by: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.answered: list[str] = []
        self.sent = 0

    def take(self, limit: int) -> bool:
        with self.lock:
            if self.sent >= limit:
                return False
            self.sent += 1
            return True


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connect to another address than the URL's host, keeping the URL's name for SNI (and Host)."""

    def __init__(self, address: str, name: str, port: int, **kw) -> None:
        super().__init__(address, port, **kw)
        self._name = name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._name)


def worker(n: int, args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    url = urlsplit(args.url)
    ctx = ssl.create_default_context()
    if args.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    conn = None
    seq = 0
    while True:
        # Why the load ended: only the stop file means it covered the whole event.
        if args.stop_file and os.path.exists(args.stop_file):
            stats.stopped_by["stop-file"] += 1
            break
        if time.monotonic() >= deadline:
            stats.stopped_by["duration"] += 1
            break
        if not stats.take(args.max_requests):
            stats.stopped_by["max-requests"] += 1
            break
        seq += 1
        rid = uuid.uuid4().hex
        body = json.dumps({"message": QUESTIONS[(n + seq) % len(QUESTIONS)]})
        headers = {"Authorization": f"Bearer {args.key}", "Content-Type": "application/json",
                   "X-Request-ID": rid, "Host": url.netloc}
        started = time.monotonic()
        status, reason = None, ""
        for attempt in range(1, args.attempts + 1):
            try:
                if conn is None:
                    if url.scheme == "https" and args.connect:
                        conn = PinnedHTTPSConnection(args.connect, url.hostname, url.port or 443,
                                                     timeout=args.timeout, context=ctx)
                    elif url.scheme == "https":
                        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=args.timeout,
                                                           context=ctx)
                    else:
                        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=args.timeout)
                conn.request("POST", url.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                if status != 200:
                    reason = data[:200].decode("utf-8", "replace")
                elif json.loads(data).get("request_id") not in (rid, None):
                    status, reason = -1, "answer carries another request id"
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
                break
            except RETRYABLE as exc:
                if conn is not None:
                    conn.close()
                conn = None
                reason = f"{type(exc).__name__}: {exc}"
                if attempt < args.attempts:
                    with stats.lock:
                        stats.retries[type(exc).__name__] += 1
                    continue
            except Exception as exc:  # timeouts and anything else: failed, no retry
                if conn is not None:
                    conn.close()
                conn = None
                reason = f"{type(exc).__name__}: {exc}"
                break
        elapsed = time.monotonic() - started
        with stats.lock:
            stats.by_status[str(status) if status is not None else "no-response"] += 1
            if status == 200:
                stats.latencies.append(elapsed)
                stats.answered.append(rid)
            else:
                stats.failure_reasons[reason.split(":")[0][:80] or str(status)] += 1
                if len(stats.failures) < 20:
                    stats.failures.append({"request_id": rid, "status": status, "reason": reason[:300],
                                           "at_s": round(started - args._t0, 2)})
        if args.pause:
            time.sleep(args.pause)


def run(args: argparse.Namespace) -> int:
    stats = Stats()
    args._t0 = time.monotonic()
    deadline = args._t0 + args.duration
    threads = [threading.Thread(target=worker, args=(i, args, stats, deadline), daemon=True)
               for i in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - args._t0
    total = sum(stats.by_status.values())
    failed = total - stats.by_status.get("200", 0)
    if args.ids_out:
        with open(args.ids_out, "w") as fh:
            fh.write("\n".join(stats.answered) + ("\n" if stats.answered else ""))
    out = {
        "requests": total, "ok": stats.by_status.get("200", 0), "failed": failed,
        "by_status": dict(stats.by_status), "failure_reasons": dict(stats.failure_reasons),
        "failures": stats.failures, "client_retries": sum(stats.retries.values()),
        "client_retry_reasons": dict(stats.retries), "concurrency": args.concurrency,
        "duration_s": round(took, 1), "rps": round(total / took, 1) if took else 0,
        "stopped_by": sorted(stats.stopped_by),
        "p50_ms": round(percentile(stats.latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(stats.latencies, 99) * 1000, 1),
        "max_ms": round(max(stats.latencies, default=0) * 1000, 1),
    }
    print(json.dumps(out))
    return 0


def check(args: argparse.Namespace) -> int:
    answered = [line.strip() for line in open(args.ids) if line.strip()]
    rows: Counter[tuple[str, str]] = Counter()
    for line in open(args.db):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 2:
            rows[(parts[0], parts[1])] += 1
    missing = [r for r in answered if rows[(r, "user")] == 0 or rows[(r, "assistant")] == 0]
    dupes = [r for r in answered if rows[(r, "user")] > 1 or rows[(r, "assistant")] > 1]
    out = {"answered": len(answered), "unique_answered": len(set(answered)),
           "in_mysql_once": len(answered) - len(set(missing) | set(dupes)),
           "missing": len(missing), "duplicated": len(dupes),
           "examples": (missing + dupes)[:5]}
    print(json.dumps(out))
    ok = not missing and not dupes and len(set(answered)) == len(answered)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--url", required=True)
    r.add_argument("--key", default=os.environ.get("LOADGEN_KEY", ""))
    r.add_argument("--concurrency", type=int, default=4)
    r.add_argument("--duration", type=float, default=60)
    r.add_argument("--max-requests", type=int, default=5000)
    r.add_argument("--stop-file", default="")
    r.add_argument("--ids-out", default="")
    r.add_argument("--timeout", type=float, default=60)
    r.add_argument("--attempts", type=int, default=3)
    r.add_argument("--pause", type=float, default=0.0, help="seconds each worker waits between turns")
    r.add_argument("--connect", default="", help="address to connect to (the URL's name stays SNI and Host)")
    r.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    c = sub.add_parser("check")
    c.add_argument("--ids", required=True)
    c.add_argument("--db", required=True)
    args = parser.parse_args()
    return run(args) if args.cmd == "run" else check(args)


if __name__ == "__main__":
    sys.exit(main())
