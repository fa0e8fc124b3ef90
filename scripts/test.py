"""`make test`: every check in one run, ending in one summary line.

Steps: yamllint, ansible-lint (production profile), syntax check of site.yml against both
inventories, the filter plugins' unit tests (tests/unit), the collection built, installed and its
roles documented by ansible-doc (scripts/collection.py), the monitoring role's alert rules (promtool
check rules, promtool test rules) and its Prometheus/Alertmanager configuration rendered for a
multi-host inventory (promtool check config, amtool check-config), the service's pytest suite, then
(with --molecule) every molecule scenario. A step's
output streams as it runs; scenarios run in --jobs lanes side by side (each has its own machines and
addresses), and a scenario's log is printed whole when it ends. The closing line names each step with
its result and time. The run fails when any step fails or when no step ran at all."""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
TOOLS_BIN = ROOT / ".cache" / "tools" / "bin"  # promtool, amtool (`make tools`)
MONITORING = ROOT / "roles" / "monitoring"

# Longest first, so that the lanes finish close together; the quick harness check runs last.
SCENARIO_ORDER = ["multihost", "noble", "jammy", "default", "monitoring", "data", "firewall", "web",
                  "base", "harness"]
LOGS = ROOT / ".cache" / "test-logs"
# A scenario that hangs must fail on its own, with its log and its machines removed, instead of
# holding a lane until CI's 90 minutes run out (what happened to stop 12's CI: no log, no verdict).
# multihost, the longest, takes 28-42 min beside another lane; hung tasks end sooner (TASK_TIMEOUT).
SCENARIO_TIMEOUT = int(os.environ.get("CHATSTACK_SCENARIO_TIMEOUT", "3600"))
# A task that hangs fails on its own first, naming itself, long before the scenario's limit; the
# longest task (multihost's rolling release, a nested playbook) takes about 3 minutes, 9 on a
# machine loaded three lanes deep.
TASK_TIMEOUT = os.environ.get("ANSIBLE_TASK_TIMEOUT", "1200")
FAILED_TAIL = 80
STOPPED_MARK = "\n*** processes of the step when it was stopped:\n"


def scenarios() -> list[str]:
    found = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))
    return sorted(found, key=lambda s: (SCENARIO_ORDER.index(s) if s in SCENARIO_ORDER else 50, s))


def optional_distros(scenario: str) -> set[str]:
    """Distros other than Debian 12 that a scenario boots: optional, skipped when unreachable."""
    conf = yaml.safe_load((ROOT / "molecule" / scenario / "molecule.yml").read_text())
    return {p.get("image", "debian12") for p in conf.get("platforms", [])} - {"debian12"}


@functools.cache
def archive_answers(distro: str) -> bool:
    return subprocess.run([str(ROOT / "scripts" / "testhost"), "probe", "--distro", distro],
                          cwd=ROOT).returncode == 0


def host_network_state() -> dict:
    """What the harness may leave behind on the controller."""
    mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
              if "chatstack-testhosts" in ln]
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    machines = subprocess.run([str(ROOT / "scripts" / "testhost"), "list"], capture_output=True,
                              text=True).stdout
    return {
        "bridge": Path("/sys/class/net/csbr0").exists(),
        "nft_table": "chatstack_testhosts" in nft,
        "mounts": mounts,
        "machines": [m["name"] for m in yaml.safe_load(machines or "[]")],
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
    }


def new_leftovers(before: dict, after: dict) -> dict:
    """What the scenarios added to the controller. A stale mount or machine that was there before
    and that a scenario's first destroy removed is not a leftover."""
    added = {k: sorted(set(after[k]) - set(before[k])) for k in ("mounts", "machines")}
    added.update({k: after[k] for k in ("bridge", "nft_table") if after[k] and not before[k]})
    if after["ip_forward"] != before["ip_forward"]:
        added["ip_forward"] = after["ip_forward"]
    return {k: v for k, v in added.items() if v}


def check_leftovers(before: dict, results: list[tuple[str, str, float]]) -> None:
    """After the scenarios the controller must hold nothing they did not find there."""
    after = host_network_state()
    added = new_leftovers(before, after)
    print(f"\n==> harness leftovers: before {before}\n                      after  {after}"
          f"\n                      added  {added}", flush=True)
    status = "FAILED(leftovers)" if added else "ok"
    results.append(("harness:leftovers", status, 0.0))
    print(f"<== harness:leftovers: {status}", flush=True)


def scenario_log(scenario: str) -> Path:
    return LOGS / f"molecule-{scenario}.log"


def scenario_cmd(scenario: str) -> list[str]:
    """`molecule test` under a per-scenario lock: machine names and addresses belong to the
    scenario, so two checkouts on one machine must not boot the same scenario at once."""
    return ["flock", f"/tmp/chatstack-molecule-{scenario}.lock", "molecule", "test", "-s", scenario]


def run_bounded(cmd: list[str], out, timeout: float | None) -> int | None:
    """Run cmd in its own process group; past `timeout` the whole group is killed and None is
    returned."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # What each process of the step was doing when it was stopped: the log alone does not say
        # which host or command a hung task waited on.
        out.write(STOPPED_MARK)
        out.flush()
        subprocess.run(["ps", "-o", "pid,etime,stat,wchan:20,args", "--forest", "-g", str(proc.pid)],
                       stdout=out, stderr=subprocess.STDOUT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def failure_tail(text: str, lines: int = FAILED_TAIL) -> str:
    """The end of a failed scenario's log: for a scenario that was stopped, the lines before it was
    stopped and its processes at that moment (the cleanup's output after them says nothing)."""
    body, sep, stopped = text.partition(STOPPED_MARK)
    stopped = stopped.split("\n*** ", 1)[0]
    return "\n".join(body.splitlines()[-lines:]) + (f"\n{STOPPED_MARK}{stopped}" if sep else "")


def step(name: str, cmd: list[str], results: list[tuple[str, str, float]],
         log: Path | None = None, timeout: float | None = None,
         cleanup: list[str] | None = None) -> bool:
    """Run one step; with `log`, its output goes to that file and is printed whole at the end, so
    that steps running side by side do not interleave. A step past `timeout` is killed, `cleanup`
    runs, and the step fails."""
    print(f"\n==> {name}: {' '.join(cmd)}" + (f" (log: {log})" if log else ""), flush=True)
    started = time.monotonic()
    if log is None:
        rc = subprocess.run(cmd, cwd=ROOT).returncode
    else:
        with log.open("w") as out:
            rc = run_bounded(cmd, out, timeout)
            if rc is None:
                out.write(f"\n*** {name}: killed after {timeout:.0f}s (CHATSTACK_SCENARIO_TIMEOUT); "
                          f"cleanup: {' '.join(cleanup or [])}\n")
                out.flush()
                if cleanup:
                    run_bounded(cleanup, out, 600)
        print(f"\n==> {name}: output\n{log.read_text(errors='replace')}", flush=True)
    took = time.monotonic() - started
    status = "ok" if rc == 0 else ("FAILED(timeout)" if rc is None else f"FAILED(rc={rc})")
    results.append((name, status, took))
    print(f"<== {name}: {status} in {took:.0f}s", flush=True)
    return rc == 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--molecule", action="store_true", help="also run every molecule scenario")
    p.add_argument("--only", nargs="*", help="molecule scenarios to run (default: all)")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("CHATSTACK_TEST_JOBS", "2")),
                   help="scenarios run side by side (default 2, env CHATSTACK_TEST_JOBS)")
    a = p.parse_args()
    os.environ["PATH"] = f"{VENV_BIN}:{TOOLS_BIN}:{os.environ['PATH']}"
    os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    os.environ.setdefault("ANSIBLE_ROLES_PATH", str(ROOT / "roles"))
    os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / "collections"))
    os.environ.setdefault("PY_COLORS", "0")
    os.environ.setdefault("ANSIBLE_FORCE_COLOR", "0")
    # Each task's start time and duration in the scenario logs: where a slow run spent its time.
    os.environ.setdefault("ANSIBLE_CALLBACKS_ENABLED", "ansible.posix.profile_tasks")
    os.environ["ANSIBLE_TASK_TIMEOUT"] = TASK_TIMEOUT
    # A test host that vanishes under an open SSH session (a machine killed, the bridge gone) ends the
    # session in a minute instead of when TCP gives up; added to Molecule's own ssh arguments.
    os.environ.setdefault("ANSIBLE_SSH_EXTRA_ARGS", "-o ServerAliveInterval=15 -o ServerAliveCountMax=4")

    started = time.monotonic()
    results: list[tuple[str, str, float]] = []
    step("yamllint", ["yamllint", "-s", "."], results)
    step("ansible-lint", ["ansible-lint", "--profile", "production"], results)
    for inv in ("sandbox", "production"):
        step(f"syntax:{inv}", ["ansible-playbook", "--syntax-check", "-i",
                                f"inventories/{inv}", "site.yml"], results)
    step("plugins:unit", ["pytest", "-q", "tests/unit"], results)
    step("monitoring:rules-check", ["promtool", "check", "rules",
                                    str(MONITORING / "files" / "rules" / "chatstack.rules.yml")], results)
    step("monitoring:rules-test", ["promtool", "test", "rules",
                                   str(MONITORING / "tests" / "chatstack.rules.test.yml")], results)
    step("monitoring:configs", ["ansible-playbook", "-i", str(MONITORING / "tests" / "inventory.yml"),
                                str(MONITORING / "tests" / "render.yml")], results)
    # The collection (galaxy.yml) builds, installs into a temporary path and documents every role
    # from its argument spec (the harness scenario then runs roles from it by FQCN on a host).
    step("collection:build-doc", [sys.executable, str(ROOT / "scripts" / "collection.py"), "all",
                                  str(ROOT / ".cache" / "collection")], results)
    if (ROOT / "service" / "scripts" / "test.sh").exists():
        step("service", ["bash", "service/scripts/test.sh"], results)
    if a.molecule:
        before = host_network_state()
        LOGS.mkdir(parents=True, exist_ok=True)
        runnable = []
        for s in a.only or scenarios():
            down = [d for d in sorted(optional_distros(s)) if not archive_answers(d)]
            if down:
                print(f"\n==> molecule:{s}: SKIPPED: the {', '.join(down)} archive does not "
                      "answer (optional platform)", flush=True)
                results.append((f"molecule:{s}", "skipped", 0.0))
            else:
                runnable.append(s)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
            list(pool.map(lambda s: step(f"molecule:{s}", scenario_cmd(s), results,
                                         log=scenario_log(s), timeout=SCENARIO_TIMEOUT,
                                         cleanup=["molecule", "destroy", "-s", s]), runnable))
        check_leftovers(before, results)

    failed = [r for r in results if r[1] not in ("ok", "skipped")]
    # CI shows the end of the output: each failed scenario's last lines go right above the verdict.
    for name, _, _ in failed:
        log = scenario_log(name.removeprefix("molecule:"))
        if name.startswith("molecule:") and log.exists():
            print(f"\n==> {name} failed; the end of {log}:\n{failure_tail(log.read_text(errors='replace'))}",
                  flush=True)
    total = time.monotonic() - started
    detail = ", ".join(f"{n} {s} {t:.0f}s" for n, s, t in results)
    if not [r for r in results if r[1] == "ok"]:
        print("make test: FAILED: no step ran", flush=True)
        return 5
    verdict = "PASSED" if not failed else f"FAILED ({len(failed)} failed)"
    passed = sum(1 for r in results if r[1] == "ok")
    skipped = sum(1 for r in results if r[1] == "skipped")
    print(f"\nmake test: {verdict}: {passed} passed, {len(failed)} failed, {skipped} skipped "
          f"in {total / 60:.1f} min [{detail}]", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
