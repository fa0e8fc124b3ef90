#!/usr/bin/env python3
"""The repository as the Ansible collection chatstack.stack (galaxy.yml).

  collection.py build DIR   ansible-galaxy collection build into DIR/dist, then install the artifact
                            into DIR/collections (--offline: the dependencies galaxy.yml names must
                            already be installed, here by the PyPI `ansible` package); prints the
                            collections path
  collection.py doc DIR     for every role under roles/: `ansible-doc -t role chatstack.stack.<role>`
                            from DIR/collections lists the options of its `main` entry point (from
                            meta/argument_specs.yml); fails naming the roles without
  collection.py playbook DIR INVENTORY PLAYBOOK
                            ansible-playbook with only DIR/collections (the harness scenario runs its
                            FQCN playbook this way)

Both run outside the checkout with a clean environment (no ANSIBLE_ROLES_PATH, filter plugins or
ansible.cfg of the checkout), so only the installed collection can answer.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
GALAXY = yaml.safe_load((ROOT / "galaxy.yml").read_text())
FQCN = f"{GALAXY['namespace']}.{GALAXY['name']}"


def clean_env(collections: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ANSIBLE_") or k in ("ANSIBLE_FORCE_COLOR", "ANSIBLE_NOCOLOR")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def build(out: Path) -> Path:
    dist, collections = out / "dist", out / "collections"
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(collections, ignore_errors=True)
    dist.mkdir(parents=True)
    env = clean_env(collections)
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(dist),
                    str(ROOT)], check=True, cwd=out, env=env, stdout=sys.stderr)
    artifact = next(dist.glob(f"{GALAXY['namespace']}-{GALAXY['name']}-*.tar.gz"))
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p",
                    str(collections), str(artifact)], check=True, cwd=out, env=env, stdout=sys.stderr)
    installed = collections / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    for must in ("roles", "plugins/filter", "service/pyproject.toml", "webchat/index.html"):
        if not (installed / must).exists():
            raise SystemExit(f"collection: {artifact.name} lacks {must}")
    print(f"collection: {artifact.name} ({artifact.stat().st_size // 1024} KB) installed into "
          f"{collections}", file=sys.stderr)
    print(collections)
    return collections


def doc(out: Path) -> None:
    collections = out / "collections"
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())
    res = subprocess.run([str(BIN / "ansible-doc"), "-t", "role", "-j",
                          *(f"{FQCN}.{role}" for role in roles)],
                         cwd=out, env=clean_env(collections), capture_output=True, text=True)
    data = json.loads(res.stdout or "{}") if res.returncode == 0 else {}
    empty, counts = [], []
    for role in roles:
        options = data.get(f"{FQCN}.{role}", {}).get("entry_points", {}).get("main", {}).get("options") or {}
        counts.append(f"{role} {len(options)}")
        if not options:
            empty.append(role)
    print(f"collection: ansible-doc -t role options of main: {', '.join(counts)}")
    if empty:
        raise SystemExit(f"collection: no options shown for {', '.join(empty)} "
                         f"(ansible-doc rc={res.returncode}: {res.stderr.strip()[-300:]})")


def playbook(out: Path, inventory: str, play: str) -> int:
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", inventory, play], cwd=out,
                          env=clean_env(out / "collections")).returncode


def main() -> int:
    if sys.argv[1:2] == ["playbook"] and len(sys.argv) == 5:
        return playbook(Path(sys.argv[2]).resolve(), *(str(Path(a).resolve()) for a in sys.argv[3:]))
    if len(sys.argv) != 3 or sys.argv[1] not in ("build", "doc", "all"):
        raise SystemExit(__doc__)
    out = Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if sys.argv[1] in ("build", "all"):
        build(out)
    if sys.argv[1] in ("doc", "all"):
        doc(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
