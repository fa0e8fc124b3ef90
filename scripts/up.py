"""`make up`: boot the sandbox hosts, converge site.yml on them with a progress line, then show
that the stack answers. Driven through ansible-runner so the output is a task counter, the current
role and the elapsed time instead of a wall of task output; a failure prints the failing task and
its error.

site.yml and the smoke play run with mitogen's strategy (modules execute in a persistent Python on
each host instead of a new interpreter per task: about 50 ms instead of 200 ms a module); the
prepare play, which waits for booting hosts, keeps the built-in one. `FAST=0` runs everything with
the built-in strategy."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "inventories" / "sandbox"
TESTHOST = ROOT / "scripts" / "testhost"


def sandbox_hosts() -> dict[str, str]:
    data = yaml.safe_load((INVENTORY / "hosts.yml").read_text())
    return {name: (h or {})["ansible_host"] for name, h in data["all"]["hosts"].items()}


class Progress:
    """Folds ansible-runner events into one status line and remembers failures."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()
        self.tasks = 0
        self.role = "-"
        self.task = ""
        self.stats: dict[str, int] = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0}
        self.failures: list[str] = []
        self.changed_tasks: list[str] = []
        self.tty = sys.stdout.isatty()
        self.last_print = 0.0

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_task_start":
            self.tasks += 1
            self.role = data.get("role") or "-"
            self.task = data.get("task", "")
            self.show()
        elif kind == "runner_on_ok":
            self.stats["ok"] += 1
            if data.get("res", {}).get("changed"):
                self.stats["changed"] += 1
                self.changed_tasks.append(f"{data.get('host')}: {data.get('task')}")
        elif kind == "runner_on_skipped":
            self.stats["skipped"] += 1
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            if data.get("ignore_errors"):
                return True
            self.stats["failed"] += 1
            res = data.get("res", {})
            msg = res.get("msg") or res.get("stderr") or res.get("stdout") or res
            self.failures.append(f"{data.get('host')} | {data.get('task')}\n    {msg}")
        return True

    def show(self, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last_print < 10:
            return
        self.last_print = now
        line = (f"[{self.label}] {now - self.started:6.1f}s  task {self.tasks:3d}  "
                f"role {self.role:<10.10}  {self.task[:60]}")
        if self.tty:
            print("\r\033[K" + line, end="" if not final else "\n", flush=True)
        else:
            print(line, flush=True)


def strategy_env(fast: bool) -> dict[str, str]:
    if not fast or os.environ.get("FAST", "1") == "0":
        return {"ANSIBLE_STRATEGY": "linear"}
    # The link `make venv` makes to mitogen's strategy plugins (bench/stack_converge.py uses it too).
    return {"ANSIBLE_STRATEGY_PLUGINS": str(ROOT / ".venv" / "mitogen-strategy"), "ANSIBLE_STRATEGY": "mitogen_linear"}


@dataclass(frozen=True)
class RunOutcome:
    rc: int
    status: str
    output: str  # what the run printed, when it failed ("" otherwise)


def ansible_run(playbook: Path, inventory: Path, envvars: dict[str, str], event_handler: Any,
                limit: str | None = None) -> RunOutcome:
    """ansible_runner.run in a private data directory of its own. ansible-runner saves a run's envvars
    as env/envvars and lets that file override the envvars of every later run in the same directory:
    the prepare play's built-in strategy stuck to site.yml (`make up` ran without mitogen)."""
    (ROOT / ".cache").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="runner-", dir=ROOT / ".cache") as private:
        result = ansible_runner.run(private_data_dir=private, project_dir=str(ROOT), playbook=str(playbook),
                                    inventory=str(inventory), limit=limit, envvars=envvars,
                                    event_handler=event_handler, quiet=True)
        return RunOutcome(result.rc, result.status, result.stdout.read() if result.rc != 0 else "")


def run_playbook(playbook: Path, label: str, limit: str | None = None, fast: bool = False) -> Progress:
    progress = Progress(label)
    result = ansible_run(playbook, INVENTORY / "hosts.yml",
                         {"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                          "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
                          "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections")} | strategy_env(fast),
                         progress, limit)
    progress.show(final=True)
    s = progress.stats
    print(f"[{label}] {result.status}: {progress.tasks} tasks, ok={s['ok']} "
          f"changed={s['changed']} failed={s['failed']} in "
          f"{time.monotonic() - progress.started:.1f}s")
    if 0 < s["changed"] <= 10:
        for task in progress.changed_tasks:
            print(f"    changed: {task}")
    if result.rc != 0:
        for failure in progress.failures:
            print(f"FAILED: {failure}", file=sys.stderr)
        if not progress.failures:
            print(result.output[-3000:], file=sys.stderr)
        sys.exit(result.rc or 1)
    return progress


def sandbox_vars() -> dict:
    return yaml.safe_load((INVENTORY / "group_vars" / "web.yml").read_text())


def acme_root(secrets: Path, acme_address: str) -> Path:
    """Pebble makes a new root at every start and serves it on its management port; the endpoint
    itself is trusted through the CA the pebble role fetched to the controller."""
    ctx = ssl.create_default_context(cafile=str(secrets / "acme-ca.pem"))
    with urllib.request.urlopen(f"https://{acme_address}:15000/roots/0", context=ctx,
                                timeout=10) as r:
        root = secrets / "acme-root.pem"
        root.write_bytes(r.read())
    return root


def show_answer(question: str) -> None:
    """Ask the stack one question over HTTPS through nginx, verifying the certificate against the
    ACME server's root, and print the answer with its sources."""
    hosts = sandbox_hosts()
    secrets = INVENTORY / ".secrets"
    key_file = secrets / "agent" / "api_key"
    domain = sandbox_vars()["chatstack_domains"][0]
    root = acme_root(secrets, hosts["sandbox-acme"])
    key = key_file.read_text().split()[0]
    url = f"https://{domain}/api/v1/chat"
    curl = ["curl", "-sS", "--fail-with-body", "--resolve", f"{domain}:443:{hosts['sandbox']}",
            "--cacert", str(root), "-H", f"Authorization: Bearer {key}",
            "-H", "Content-Type: application/json"]
    body = json.dumps({"message": question}, ensure_ascii=False)
    res = subprocess.run([*curl, "-d", body, url], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"chat request failed: {res.stderr or res.stdout}", file=sys.stderr)
        sys.exit(1)
    reply = json.loads(res.stdout)
    print(f"\nQ: {question}\nA: {reply['answer']}")
    for src in reply.get("sources", []):
        print(f"   source: {src['id']}  {src['title']}  (score {src['score']:.2f})")
    print(f"   session {reply['session_id']}, intent {reply['intent']}, served over TLS by "
          f"{domain}, certificate verified against the ACME root {root}")
    shown = shlex.join(curl).replace(shlex.quote(f"Authorization: Bearer {key}"),
                                     '"Authorization: Bearer $KEY"')
    print(f"""
Keep chatting:
  KEY=$(cat {key_file})
  {shown} -d '{{"message": "我的订单什么时候发货？", "session_id": "{reply['session_id']}"}}' {url}
With the openai SDK (pip install openai), on a machine that resolves {domain} to {hosts['sandbox']}:
  SSL_CERT_FILE={root} python3 -c "import openai; c = openai.OpenAI(base_url='https://{domain}/v1', api_key='$KEY'); print(c.chat.completions.create(model='chatagent', messages=[{{'role': 'user', 'content': 'How do I get an invoice?'}}]).choices[0].message.content)"
""")


def show_monitoring() -> None:
    """Prometheus and Alertmanager listen on the monitoring host's loopback only: print the SSH
    tunnel that opens their UIs here."""
    groups = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]["children"]
    monitoring = sorted((groups.get("monitoring") or {}).get("hosts") or {})
    if not monitoring:
        return
    host = sandbox_hosts()[monitoring[0]]
    key = Path.home() / ".cache" / "chatstack" / "ssh" / "id_ed25519"
    print(f"""Monitoring (Prometheus and Alertmanager on {monitoring[0]}, loopback only):
  ssh -i {key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \\
      -N -L 9090:127.0.0.1:9090 -L 9093:127.0.0.1:9093 root@{host}
  then open http://127.0.0.1:9090/alerts (Prometheus) and http://127.0.0.1:9093 (Alertmanager);
  Grafana users import roles/monitoring/files/grafana/chatstack.json.
""")


def show_webchat() -> None:
    """Where a browser finds the customer web chat when the inventory turns public mode on; the page
    is fetched once over verified TLS so the URL printed is known to work."""
    shared = yaml.safe_load((INVENTORY / "group_vars" / "all.yml").read_text()) or {}
    if not shared.get("chatstack_public_chat"):
        return
    domain = sandbox_vars()["chatstack_domains"][0]
    address = sandbox_hosts()["sandbox"]
    root = INVENTORY / ".secrets" / "acme-root.pem"
    url = f"https://{domain}/chat/"
    res = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", f"{domain}:443:{address}",
                          "--cacert", str(root), url], capture_output=True, text=True)
    if res.stdout != "200":
        print(f"web chat page not served: {res.stdout} {res.stderr}", file=sys.stderr)
        sys.exit(1)
    print(f"""Web chat for customers (no API key): {url}
  resolve {domain} to {address} (e.g. in /etc/hosts) and trust {root}, or:
  chromium --host-resolver-rules="MAP {domain} {address}" --ignore-certificate-errors {url}
  On a shop's page (list its origin in agent_public_allowed_origins):
  <script src="https://{domain}/chat/chat.js" async></script>
""")


def up() -> None:
    started = time.monotonic()
    for name, address in sandbox_hosts().items():
        subprocess.run([str(TESTHOST), "up", name, address], check=True)
    run_playbook(ROOT / "molecule" / "shared" / "prepare.yml", "prepare")
    run_playbook(ROOT / "site.yml", "site.yml", fast=True)
    run_playbook(ROOT / "playbooks" / "sandbox-smoke.yml", "smoke", fast=True)
    show_answer("How do I get an invoice?")
    show_monitoring()
    show_webchat()
    print(f"make up: done in {time.monotonic() - started:.0f}s")


def down() -> None:
    for name in sandbox_hosts():
        subprocess.run([str(TESTHOST), "down", name], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("action", choices=["up", "down"])
    a = p.parse_args()
    os.chdir(ROOT)
    # ansible-runner calls ansible-playbook from PATH: make it the one beside this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    up() if a.action == "up" else down()


if __name__ == "__main__":
    main()
