"""The sysctl role's data work: which managed keys this host can apply and which differ from the
running kernel, from one `sysctl -e <keys>` read (a module call per key dominated converge time)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence


def _norm(value) -> str:
    # The kernel separates multi-value keys with tabs ("10240\t65000"); settings use spaces.
    return re.sub(r"\s+", " ", str(value).strip())


def sysctl_running(lines: Iterable[str]) -> dict[str, str]:
    """Parse `sysctl -e` output (``key = value`` lines); keys the kernel lacks are simply absent."""
    out = {}
    for line in lines or []:
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value
    return out


def sysctl_plan(settings: Mapping, running: Mapping[str, str], in_container: bool,
                host_only: Sequence[str] = ()) -> dict[str, list[str]]:
    """Sort the managed keys: ``applicable`` (the kernel has them and this host may write them:
    inside a container only ``net.*`` keys outside ``host_only``), ``differing`` (applicable and not
    at the managed value) and ``skipped`` (written to the file but not applied now)."""
    applicable = [k for k in sorted(settings) if k in running
                  and (not in_container or (k.startswith("net.") and k not in host_only))]
    differing = [k for k in applicable if _norm(running[k]) != _norm(settings[k])]
    skipped = [k for k in sorted(settings) if k not in applicable]
    return {"applicable": applicable, "differing": differing, "skipped": skipped}


class FilterModule:
    def filters(self):
        return {"sysctl_running": sysctl_running, "sysctl_plan": sysctl_plan}
