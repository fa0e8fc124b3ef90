#!/usr/bin/env python3
"""Stack converge benchmark: fresh-host converge time and no-op re-converge time.

Boots one fresh test host (`default-bench`, 10.213.0.63, in every group), runs the `default`
scenario's converge playbook against it through ansible-runner (fresh and no-op with mitogen's
strategy, as `make up` runs site.yml, then a no-op with the built-in one, as `ansible-playbook`
and molecule run it; `--fresh-strategy linear` converges the fresh host with the built-in one
too), and prints wall time
plus ok/changed/failed counts per run (from the runner's event stream), then removes the host.

    .venv/bin/python bench/stack_converge.py [--keep] [--playbook PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from up import ansible_run  # noqa: E402

NAME, ADDRESS = "default-bench", "10.213.0.63"


def testhost(*args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "testhost"), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def converge(inventory: Path, playbook: Path, strategy: str = "linear") -> dict:
    counts: Counter[str] = Counter()
    # Seconds per (role, task) as the callback timed them on the host's side of the run.
    task_seconds: Counter[tuple[str, str]] = Counter()
    changed_tasks: list[str] = []
    failures: list[str] = []

    def on_event(event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind in ("runner_on_ok", "runner_on_skipped", "runner_on_failed") and data.get("duration"):
            task_seconds[(data.get("role") or "(play)", data.get("task", "?"))] += float(data["duration"])
        if kind == "runner_on_ok":
            counts["ok"] += 1
            if data.get("res", {}).get("changed"):
                counts["changed"] += 1
                changed_tasks.append(data.get("task", "?"))
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            counts["failed"] += 1
            res = data.get("res", {})
            failures.append(f"{data.get('task', '?')}: {res.get('msg', '')} {res.get('stderr', '')}"[:800])
        elif kind == "runner_on_skipped":
            counts["skipped"] += 1
        return True

    env = {
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        # Plain ansible unless mitogen's strategy is asked for (as `make up FAST=1` does).
        "ANSIBLE_STRATEGY": strategy,
        "ANSIBLE_STRATEGY_PLUGINS": str(ROOT / ".venv" / "mitogen-strategy"),
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}",
    }
    started = time.monotonic()
    result = ansible_run(playbook, inventory, env, on_event)
    return {"seconds": round(time.monotonic() - started, 1), "rc": result.rc, "status": result.status,
            **{k: counts[k] for k in ("ok", "changed", "failed", "skipped")}, "changed_tasks": changed_tasks,
            "failures": failures, "task_seconds": task_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--playbook", default=str(ROOT / "molecule" / "default" / "converge.yml"))
    parser.add_argument("--keep", action="store_true",
                        help="leave the host running, and its inventory and secrets in /tmp/stack-bench-keep")
    parser.add_argument("--fresh-strategy", default="mitogen_linear", choices=["mitogen_linear", "linear"])
    args = parser.parse_args()

    key = testhost("key")
    testhost("down", NAME) if NAME in testhost("list") else None
    boot = time.monotonic()
    testhost("up", NAME, ADDRESS)
    boot_s = round(time.monotonic() - boot, 1)
    try:
        kept = Path("/tmp/stack-bench-keep")
        if args.keep:
            shutil.rmtree(kept, ignore_errors=True)
            kept.mkdir()
        with contextlib.nullcontext(str(kept)) if args.keep else tempfile.TemporaryDirectory(prefix="stack-bench-") as tmp:
            private = Path(tmp)
            inventory = private / "hosts.yml"
            # The converge playbook targets `default-stack`; point that name at the bench machine.
            host = {"ansible_host": ADDRESS, "ansible_user": "root", "ansible_ssh_private_key_file": key,
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}
            # A benchmark host: lift the per-client rate limit so bench/stack_tls.py measures throughput.
            # As in the default scenario: a test domain and a self-signed certificate (no ACME server).
            inv = {"all": {"vars": {"chatstack_secrets_dir": str(private / "secrets"), "agent_rate_limit": "1000000/minute",
                                    "chatstack_domains": ["chat.default.test"], "certbot_tls_mode": "selfsigned"},
                           "children": {g: {"hosts": {"default-stack": host}} for g in ("web", "app", "redis", "mysql")}}}
            inventory.write_text(json.dumps(inv))
            prepare = ROOT / "molecule" / "shared" / "prepare.yml"
            prep = converge(inventory, prepare)
            first = converge(inventory, Path(args.playbook), strategy=args.fresh_strategy)
            fast = converge(inventory, Path(args.playbook), strategy="mitogen_linear")
            second = converge(inventory, Path(args.playbook))
    finally:
        if not args.keep:
            testhost("down", NAME)
    print(f"{'boot fresh host:':33s} {boot_s:7.1f} s")
    print(f"{'prepare (apt lists):':33s} {prep['seconds']:7.1f} s")
    runs = ((f"fresh converge ({args.fresh_strategy})", first), ("no-op, mitogen_linear", fast),
            ("no-op, linear", second))
    for label, run in runs:
        print(f"{label + ':':33s} {run['seconds']:7.1f} s  rc={run['rc']} ok={run['ok']} changed={run['changed']} "
              f"failed={run['failed']} skipped={run['skipped']}")
    for label, run in runs:
        for failure in run["failures"]:
            print(f"{label} failed: {failure}")
    # Where a no-op spends its time: by role, and the ten slowest tasks (the rest is the controller's
    # own work between tasks: templating, conditionals, the strategy loop).
    # (Built-in strategy: its per-task durations are the modules' own.)
    timed = second["task_seconds"]
    by_role: Counter[str] = Counter()
    for (role, _task), seconds in timed.items():
        by_role[role] += seconds
    print(f"no-op: {sum(timed.values()):.1f} s in {len(timed)} timed tasks; by role: "
          + ", ".join(f"{r} {t:.1f}" for r, t in by_role.most_common()))
    print("no-op slowest: " + "; ".join(f"{r}/{t} {s:.2f}" for (r, t), s in timed.most_common(10)))
    for label, run in runs[1:]:
        if run["changed_tasks"]:
            print(f"changed on {label}: " + "; ".join(run["changed_tasks"]))
    return 0 if first["rc"] == 0 and second["rc"] == 0 and second["changed"] == 0 and fast["changed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
