#!/usr/bin/env python3
"""Build the wheelhouse of one (version, host Python, architecture) on the controller, once per
service source fingerprint.

The archive is named after the fingerprint (`<id>-<sha12>.tar`), so checkouts with different
service sources never overwrite each other's wheelhouse, and it appears by an atomic rename under
a lock, so plays running side by side (parallel scenarios) never read a half-built one. Prints one
JSON line: {"changed": bool, "tar": path}.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

KEEP = 4  # archives kept per wheelhouse id (other checkouts may still be shipping an older one)


def pip(python: str, *args: str) -> None:
    subprocess.run([python, "-m", "pip", *args], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--sha", required=True)
    p.add_argument("--service-dir", type=Path, required=True)
    p.add_argument("--python", required=True, help="controller Python that runs pip")
    p.add_argument("--pyver", required=True, help="the host's Python, e.g. 3.11")
    p.add_argument("--platform", action="append", default=[])
    p.add_argument("--extra", action="append", default=[], help="extra requirement (no deps)")
    a = p.parse_args()

    a.cache.mkdir(parents=True, exist_ok=True)
    tar = a.cache / f"{a.id}-{a.sha[:12]}.tar"
    with open(a.cache / f"{a.id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists():
            print(json.dumps({"changed": False, "tar": str(tar)}))
            return 0
        with tempfile.TemporaryDirectory(dir=a.cache, prefix=f".{a.id}-") as tmp:
            src, wheels = Path(tmp) / "src", Path(tmp) / "wheels"
            src.mkdir()
            for name in ("pyproject.toml", "README.md"):
                if (a.service_dir / name).is_file():
                    shutil.copy2(a.service_dir / name, src / name)
            shutil.copytree(a.service_dir / "chatagent", src / "chatagent",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            pip(a.python, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(src))
            service_wheel = next(wheels.glob("chatagent-*.whl"))
            target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", a.pyver,
                      *(f"--platform={pl}" for pl in a.platform)]
            lockfile = a.service_dir / "requirements.lock"
            constraint = ["--constraint", str(lockfile)] if lockfile.is_file() else []
            pip(a.python, "download", "--quiet", *target, "--dest", str(wheels), *constraint,
                str(service_wheel))
            if a.extra:
                pip(a.python, "download", "--quiet", "--no-deps", *target, "--dest", str(wheels),
                    *constraint, *a.extra)
            part = Path(tmp) / "wheelhouse.tar"
            with tarfile.open(part, "w") as out:
                for wheel in sorted(wheels.glob("*.whl")):
                    out.add(wheel, arcname=wheel.name)
            part.chmod(0o644)
            part.rename(tar)
        for old in sorted(a.cache.glob(f"{a.id}-*.tar"), key=lambda f: f.stat().st_mtime)[:-KEEP]:
            old.unlink(missing_ok=True)
    print(json.dumps({"changed": True, "tar": str(tar)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
