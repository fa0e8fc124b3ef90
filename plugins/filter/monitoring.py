"""Monitoring filters: where each host's exporters listen and what Prometheus scrapes, derived from
the inventory groups (nobody types an address), and per-site alert rule overrides. Used by the
monitoring role and playbooks/site.yml; unit tests in tests/unit/test_monitoring.py."""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from ansible.errors import AnsibleFilterError

LOOPBACK = "127.0.0.1"


def private_address(host: str, hostvars: Mapping[str, Any]) -> str:
    """The address other hosts reach `host` on: chatstack_private_address, else ansible_host."""
    hv = hostvars.get(host, {})
    return str(hv.get("chatstack_private_address") or hv.get("ansible_host") or host)


def monitoring_address(host: str, hostvars: Mapping[str, Any], monitoring_hosts: list[str]) -> str:
    """Where `host`'s exporters listen and where Prometheus finds them: loopback when the only
    monitoring host is this very host (single-host layout), the private address otherwise."""
    if list(monitoring_hosts) == [host]:
        return LOOPBACK
    return private_address(host, hostvars)


def monitoring_sources(monitoring_hosts: list[str], hostvars: Mapping[str, Any]) -> list[str]:
    """Addresses the monitoring hosts scrape from (allowed through the exporters' firewall)."""
    return sorted({private_address(h, hostvars) for h in monitoring_hosts})


def monitoring_targets(hosts: list[str], hostvars: Mapping[str, Any], monitoring_hosts: list[str],
                       port: int) -> list[dict[str, Any]]:
    """Prometheus static_configs: one per host, `instance` labelled with the inventory name."""
    return [{"targets": [f"{monitoring_address(h, hostvars, monitoring_hosts)}:{int(port)}"],
             "labels": {"instance": h}} for h in hosts]


def monitoring_agent_targets(app_hosts: list[str], web_hosts: list[str], hostvars: Mapping[str, Any],
                             monitoring_hosts: list[str], agent_port: int,
                             status_port: int) -> list[dict[str, Any]]:
    """The agent's /metrics: an app host that is also a web host serves Gunicorn on a unix socket,
    so its nginx status server proxies /metrics; other app hosts listen on TCP agent_port."""
    return [{"targets": [f"{monitoring_address(h, hostvars, monitoring_hosts)}:"
                         f"{int(status_port) if h in web_hosts else int(agent_port)}"],
             "labels": {"instance": h}} for h in app_hosts]


def monitoring_tls_targets(web_hosts: list[str], domains: list[str], hostvars: Mapping[str, Any],
                           monitoring_hosts: list[str], port: int) -> list[dict[str, Any]]:
    """Blackbox TLS probes: every domain on every web host (each host holds its own certificate),
    with the blackbox module of that domain (blackbox.yml names it tls_<domain>)."""
    return [{"targets": [f"{monitoring_address(h, hostvars, monitoring_hosts)}:{int(port)}"],
             "labels": {"instance": h, "domain": d, "module": tls_module(d)}}
            for h in web_hosts for d in domains]


def tls_module(domain: str) -> str:
    return "tls_" + re.sub(r"[^A-Za-z0-9]", "_", domain)


def monitoring_firewall_rules(host: str, groups: Mapping[str, list[str]], hostvars: Mapping[str, Any],
                              monitoring_hosts: list[str], ports: Mapping[str, int]) -> list[dict[str, Any]]:
    """Firewall rules for `host`: each exporter port it serves, open to the monitoring hosts only.
    None on loopback (single host). `ports` names node, redis, mysql, nginx, nginx_status, agent."""
    if not monitoring_hosts or monitoring_address(host, hostvars, monitoring_hosts) == LOOPBACK:
        return []
    member = {g: host in groups.get(g, []) for g in ("redis", "mysql", "web", "app")}
    served = [("node", "node exporter")]
    if member["redis"]:
        served.append(("redis", "redis exporter"))
    if member["mysql"]:
        served.append(("mysql", "mysqld exporter"))
    if member["web"]:
        served += [("nginx", "nginx exporter"), ("nginx_status", "nginx status and agent metrics")]
    elif member["app"]:
        served.append(("agent", "agent metrics"))
    return [{"port": str(int(ports[name])), "proto": "tcp", "from": source,
             "comment": f"monitoring: {what} from {source}"}
            for name, what in served for source in monitoring_sources(monitoring_hosts, hostvars)]


_OVERRIDABLE = ("expr", "for", "labels", "annotations")


def monitoring_rule_overrides(rules: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Apply per-alert overrides ({AlertName: {for, expr, labels, annotations}}) to a rules file;
    labels and annotations are merged, an unknown alert name or key is an error (a typo would
    otherwise silently keep the default)."""
    out = copy.deepcopy(dict(rules))
    known = {r["alert"]: r for g in out.get("groups", []) for r in g.get("rules", []) if "alert" in r}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise AnsibleFilterError(f"monitoring_alert_overrides names unknown alerts: {', '.join(unknown)}")
    for name, change in overrides.items():
        bad = sorted(set(change) - set(_OVERRIDABLE))
        if bad:
            raise AnsibleFilterError(f"monitoring_alert_overrides[{name}]: unknown keys {', '.join(bad)}")
        rule = known[name]
        for key, value in change.items():
            if key in ("labels", "annotations"):
                rule[key] = {**rule.get(key, {}), **value}
            else:
                rule[key] = value
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "monitoring_address": monitoring_address,
            "monitoring_sources": monitoring_sources,
            "monitoring_targets": monitoring_targets,
            "monitoring_agent_targets": monitoring_agent_targets,
            "monitoring_tls_targets": monitoring_tls_targets,
            "monitoring_tls_module": tls_module,
            "monitoring_firewall_rules": monitoring_firewall_rules,
            "monitoring_rule_overrides": monitoring_rule_overrides,
        }
