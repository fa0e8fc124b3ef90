#!/usr/bin/env python3
"""Failed requests while the sandbox's Gunicorn workers recycle under full load.

Converges the `make up` sandbox (agent and nginx only) with the rate limits lifted and the workers
recycling every `--max-requests` requests (±500), loads GET /health through nginx TLS with wrk
(32 connections) for `--rounds` rounds of `--seconds`, prints each round's requests and non-2xx
answers, then converges the sandbox back to its inventory. `--copies N` overrides
nginx_upstream_backup_copies for the run (the role's default otherwise), to compare.

    .venv/bin/python bench/stack_recycle.py [--max-requests 3000] [--seconds 15] [--rounds 2] [--copies 3]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse

import stack_tls as st


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-requests", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--copies", type=int, default=None)
    args = parser.parse_args()

    extra: dict = dict(st.LIFTED, agent_extra_env={"CHATAGENT_MAX_REQUESTS": str(args.max_requests),
                                                    "CHATAGENT_MAX_REQUESTS_JITTER": "500"})
    if args.copies is not None:
        extra["nginx_upstream_backup_copies"] = args.copies
    _, domain, hosts_file = st.sandbox_target()
    st.converge(extra)
    try:
        copies = "the role's default" if args.copies is None else str(args.copies)
        print(f"\n# GET /health through nginx TLS, 32 connections, workers recycling every ~{args.max_requests} "
              f"requests, nginx_upstream_backup_copies {copies}")
        print("| round | req/s | requests | non-2xx | socket errors | recycles (≈) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for n in range(1, args.rounds + 1):
            r = st.wrk(f"https://{domain}/health", hosts_file, 32, args.seconds)
            print(f"| {n} | {r['rps']:.0f} | {r['requests']} | {r['non2xx']} | {r['socket_errors']} | "
                  f"{r['requests'] // args.max_requests} |", flush=True)
    finally:
        st.converge(None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
