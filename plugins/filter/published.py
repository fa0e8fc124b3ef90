"""Which host of a group serves the values its role publishes (docs/contracts.md).

A producer role (redis, mysql) publishes its connection values as facts on every host of its group.
With replication a data host that is down publishes nothing in that run, so a consumer reads the
first host of the group that did publish, in inventory order; when none did (check mode on fresh
hosts, or a consumer play run alone) it falls back to the first host of the group, so the consumer's
``mandatory`` checks name the value that is missing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError


def first_published(hosts: Sequence[str] | None, hostvars: Mapping, key: str) -> str:
    """The first of ``hosts`` whose hostvars define ``key``, else the first of ``hosts``, else ''."""
    if hosts is None:
        return ""
    if isinstance(hosts, (str, bytes)) or not isinstance(hosts, Sequence):
        raise AnsibleFilterError(f"first_published: expected a list of host names, got {type(hosts).__name__}")
    for host in hosts:
        if host in hostvars and key in hostvars[host]:
            return str(host)
    return str(hosts[0]) if hosts else ""


class FilterModule:
    def filters(self):
        return {"first_published": first_published}
