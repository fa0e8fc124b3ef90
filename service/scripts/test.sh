#!/usr/bin/env bash
# Test entry point for service/: venv (reused), pinned deps, then the whole pytest suite.
# Starts its own throwaway Redis and MariaDB from Debian packages (requirements-apt.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < requirements-apt.txt
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
  else
    echo "missing Debian packages: ${missing[*]} (apt-get install -y \$(cat service/requirements-apt.txt))" >&2
    exit 1
  fi
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
stamp=.venv/.deps-stamp
want=$(cat pyproject.toml requirements.lock requirements-test.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -r requirements-test.txt -e .
  echo "$want" > "$stamp"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
.venv/bin/pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -ne 0 ]]; then
  exit "$rc"
fi
if ! grep -Eq '^[0-9]+ passed' <(tail -n 3 "$log" | sed -E 's/^=+ //'); then
  echo "test.sh: no test passed (0 tests ran?)" >&2
  exit 1
fi
