#!/usr/bin/env python3
"""Print one SHA-256 over the names and contents of every file under the given paths (sorted).

Used by the agent role on the controller to decide whether a wheelhouse or a knowledge base must be
rebuilt. Extra `--salt=TEXT` arguments are mixed in (e.g. the embedder name). Caches and build
leftovers (__pycache__, *.pyc, *.egg-info, build/, .pytest_cache) are ignored.
"""
import hashlib
import os
import sys

SKIP_DIRS = {"__pycache__", ".pytest_cache", "build", "dist", ".git", ".venv", ".mypy_cache", ".ruff_cache"}


def main(args: list[str]) -> int:
    digest = hashlib.sha256()
    for arg in args:
        if arg.startswith("--salt="):
            digest.update(b"salt\0" + arg[7:].encode() + b"\0")
            continue
        if os.path.isfile(arg):
            entries = [(os.path.basename(arg), arg)]
        elif os.path.isdir(arg):
            entries = []
            for root, dirs, files in os.walk(arg):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
                for name in sorted(files):
                    if name.endswith((".pyc", ".pyo")):
                        continue
                    full = os.path.join(root, name)
                    entries.append((os.path.relpath(full, arg), full))
        else:
            digest.update(b"missing\0" + arg.encode() + b"\0")
            continue
        for rel, full in sorted(entries):
            digest.update(rel.encode() + b"\0")
            with open(full, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    print(digest.hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
