#!/usr/bin/env python3
"""Chat load during a release: failed requests and p99 latency while playbooks/deploy.yml rolls.

Runs the scenarios' load generator (molecule/shared/files/loadgen.py) on the controller against
the inventory's first web host over HTTPS (SNI and Host are the site's name, the connection goes to
the web host's address), starts `ansible-playbook playbooks/deploy.yml -e agent_release=<name>`,
stops the load a few seconds after the playbook ended and prints one line:

    rolling release 1.4.0-r2 over app1,app2: deploy rc=0 in 71.3 s; 1234 requests, 0 failed, p50 85 ms, p99 910 ms ...

The API key is read from the inventory's secrets directory (<inventory>/.secrets/agent/api_key or
--secrets). The app's and nginx's rate limits count against one client: lift them for the bench
(agent_rate_limit, nginx_limit_req_rate), or failures will be 429s.

    .venv/bin/python bench/rolling_release.py -i inventories/multihost --release 1.4.0-r2 [--concurrency 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = ROOT / "molecule" / "shared" / "files" / "loadgen.py"


def inventory(path: str) -> dict:
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-inventory"), "-i", path, "--list"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--inventory", required=True)
    ap.add_argument("--release", required=True, help="agent_release to roll out")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--secrets", default="", help="secrets directory (default <inventory>/.secrets)")
    ap.add_argument("--tail", type=float, default=5, help="seconds of load after the playbook ended")
    args = ap.parse_args()

    inv = inventory(args.inventory)
    hostvars = inv["_meta"]["hostvars"]
    web = inv["web"]["hosts"][0]
    apps = inv["app"]["hosts"]
    domain = hostvars[web].get("chatstack_domains", [web])[0]
    secrets = Path(args.secrets or Path(args.inventory) / ".secrets")
    key = (secrets / "agent" / "api_key").read_text().split()[0]

    with tempfile.TemporaryDirectory() as tmp:
        stop = Path(tmp) / "stop"
        load = subprocess.Popen(
            [sys.executable, str(LOADGEN), "run", "--url", f"https://{domain}/api/v1/chat",
             "--connect", hostvars[web].get("ansible_host", web), "--concurrency", str(args.concurrency),
             "--duration", "3600", "--max-requests", "1000000", "--stop-file", str(stop), "--insecure"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "LOADGEN_KEY": key})
        time.sleep(3)
        started = time.monotonic()
        deploy = subprocess.run([str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", args.inventory,
                                 "playbooks/deploy.yml", "-e", f"agent_release={args.release}"],
                                cwd=ROOT, capture_output=True, text=True)
        took = time.monotonic() - started
        time.sleep(args.tail)
        stop.touch()
        figures = json.loads(load.communicate()[0])
    if deploy.returncode != 0:
        print("\n".join(deploy.stdout.splitlines()[-25:]), file=sys.stderr)
    print(f"rolling release {args.release} over {','.join(apps)}: deploy rc={deploy.returncode} in {took:.1f} s; "
          f"{figures['requests']} requests, {figures['failed']} failed, p50 {figures['p50_ms']:.0f} ms, "
          f"p99 {figures['p99_ms']:.0f} ms, max {figures['max_ms']:.0f} ms, {figures['rps']} req/s, "
          f"client retries {figures['client_retries']} {figures['client_retry_reasons']}")
    if figures["failed"]:
        print(json.dumps(figures["failures"], indent=1), file=sys.stderr)
    return 0 if deploy.returncode == 0 and figures["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
