"""plugins/filter/monitoring.py, and the coverage of the monitoring role's rule unit tests."""

from __future__ import annotations

from pathlib import Path

import monitoring as f
import pytest
import yaml
from ansible.errors import AnsibleFilterError

ROLE = Path(__file__).resolve().parents[2] / "roles" / "monitoring"

PORTS = {"node": 9100, "redis": 9121, "mysql": 9104, "nginx": 9113, "nginx_status": 8081, "agent": 8000}
HOSTVARS = {
    "web1": {"ansible_host": "203.0.113.10", "chatstack_private_address": "10.0.0.10"},
    "app1": {"ansible_host": "10.0.0.20"},
    "db1": {"ansible_host": "10.0.0.40"},
    "mon1": {"ansible_host": "10.0.0.50"},
    "solo": {"ansible_host": "10.213.0.101"},
}
MULTI = {"web": ["web1"], "app": ["app1"], "redis": ["db1"], "mysql": ["db1"], "monitoring": ["mon1"]}
SINGLE = {g: ["solo"] for g in ("web", "app", "redis", "mysql", "monitoring")}


def test_single_host_listens_on_loopback_and_opens_nothing():
    assert f.monitoring_address("solo", HOSTVARS, ["solo"]) == "127.0.0.1"
    assert f.monitoring_firewall_rules("solo", SINGLE, HOSTVARS, ["solo"], PORTS) == []
    assert f.monitoring_targets(["solo"], HOSTVARS, ["solo"], 9100) == [
        {"targets": ["127.0.0.1:9100"], "labels": {"instance": "solo"}}]


def test_multi_host_uses_private_addresses():
    # web1's ansible_host is public: scraping and binding use its private address.
    assert f.monitoring_address("web1", HOSTVARS, ["mon1"]) == "10.0.0.10"
    assert f.monitoring_address("mon1", HOSTVARS, ["mon1"]) == "127.0.0.1"
    assert f.monitoring_address("mon1", HOSTVARS, ["mon1", "web1"]) == "10.0.0.50"
    assert f.monitoring_sources(["mon1"], HOSTVARS) == ["10.0.0.50"]


def test_firewall_rules_follow_the_groups():
    ports = lambda host: sorted(int(r["port"]) for r in f.monitoring_firewall_rules(host, MULTI, HOSTVARS, ["mon1"], PORTS))
    assert ports("db1") == [9100, 9104, 9121]
    assert ports("web1") == [8081, 9100, 9113]
    assert ports("app1") == [8000, 9100]
    rules = f.monitoring_firewall_rules("db1", MULTI, HOSTVARS, ["mon1"], PORTS)
    assert {r["from"] for r in rules} == {"10.0.0.50"} and {r["proto"] for r in rules} == {"tcp"}
    assert f.monitoring_firewall_rules("db1", MULTI, HOSTVARS, [], PORTS) == []


def test_agent_metrics_via_nginx_status_on_web_hosts_else_the_agent_port():
    groups_web = ["solo"]
    got = f.monitoring_agent_targets(["solo", "app1"], groups_web, HOSTVARS, ["mon1"], 8000, 8081)
    assert got == [{"targets": ["10.213.0.101:8081"], "labels": {"instance": "solo"}},
                   {"targets": ["10.0.0.20:8000"], "labels": {"instance": "app1"}}]


def test_tls_targets_each_domain_on_each_web_host():
    got = f.monitoring_tls_targets(["web1"], ["chat.example.com", "help.example.com"], HOSTVARS, ["mon1"], 443)
    assert [t["labels"]["module"] for t in got] == ["tls_chat_example_com", "tls_help_example_com"]
    assert {t["targets"][0] for t in got} == {"10.0.0.10:443"}


RULES = {"groups": [{"name": "g", "rules": [
    {"alert": "RedisDown", "expr": "redis_up == 0", "for": "1m", "labels": {"severity": "critical"}},
    {"record": "job:up:sum", "expr": "sum(up)"}]}]}


def test_overrides_change_for_and_merge_labels():
    out = f.monitoring_rule_overrides(RULES, {"RedisDown": {"for": "5s", "labels": {"team": "ops"}}})
    rule = out["groups"][0]["rules"][0]
    assert rule["for"] == "5s" and rule["labels"] == {"severity": "critical", "team": "ops"}
    assert RULES["groups"][0]["rules"][0]["for"] == "1m"  # the input is not modified


def test_overrides_refuse_unknown_alerts_and_keys():
    with pytest.raises(AnsibleFilterError, match="RedisDwn"):
        f.monitoring_rule_overrides(RULES, {"RedisDwn": {"for": "5s"}})
    with pytest.raises(AnsibleFilterError, match="severity"):
        f.monitoring_rule_overrides(RULES, {"RedisDown": {"severity": "page"}})


def test_every_shipped_alert_has_a_unit_test_that_expects_it_to_fire():
    rules = yaml.safe_load((ROLE / "files" / "rules" / "chatstack.rules.yml").read_text())
    tests = yaml.safe_load((ROLE / "tests" / "chatstack.rules.test.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    firing = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts - firing == set()
    assert len(alerts) >= 18
