#!/usr/bin/env python3
"""Measure when SSE events arrive through nginx: prints JSON with arrival offsets (seconds).

usage: sse_probe.py HOST PATH CAFILE [METHOD]
"""
import http.client
import json
import ssl
import sys
import time

host, path, cafile = sys.argv[1], sys.argv[2], sys.argv[3]
method = sys.argv[4] if len(sys.argv) > 4 else "GET"
ctx = ssl.create_default_context(cafile=cafile)
conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=30)
start = time.monotonic()
body = json.dumps({"stream": True, "messages": [{"role": "user", "content": "hi"}]}) if method == "POST" else None
conn.request(method, path, body=body, headers={"Accept": "text/event-stream", "Content-Type": "application/json"})
resp = conn.getresponse()
arrivals = []
while True:
    line = resp.readline()
    if not line:
        break
    if line.startswith(b"data:"):
        arrivals.append(round(time.monotonic() - start, 3))
print(json.dumps({"status": resp.status, "content_type": resp.getheader("Content-Type"),
                  "events": len(arrivals), "arrivals": arrivals}))
