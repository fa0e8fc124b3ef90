from __future__ import annotations

import base64

import pytest
from ansible.errors import AnsibleFilterError

from firewall import (fail2ban_jails, fail2ban_value, firewall_declared_rules, firewall_ssh_ports,
                      ufw_missing_rules, ufw_settings_differ, ufw_table_rules, ufw_undeclared_rules)

SSH = {"rule": "limit", "port": "22", "proto": "tcp", "from": "any", "comment": "chatstack ssh"}
V4 = """*filter
### RULES ###

### tuple ### limit tcp 22 0.0.0.0/0 any 0.0.0.0/0 in comment=636861747374616b20737368
-A ufw-user-input -p tcp --dport 22 -j ufw-user-limit-accept
### tuple ### allow tcp 443 0.0.0.0/0 any 0.0.0.0/0 in comment=6e67696e78206874747073
### tuple ### allow tcp 9100 0.0.0.0/0 any 10.213.0.1 in
### tuple ### allow tcp 9999 0.0.0.0/0 any 0.0.0.0/0 in
### tuple ### reject any any 0.0.0.0/0 any 10.213.0.32 in
### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 OpenSSH - in
### tuple ### allow udp 53 0.0.0.0/0 any 0.0.0.0/0 in_eth0
### END RULES ###
"""
V6 = """### tuple ### limit tcp 22 ::/0 any ::/0 in
### tuple ### allow tcp 443 ::/0 any ::/0 in
"""


def table(path: str, text: str) -> dict:
    return {"source": path, "content": base64.b64encode(text.encode()).decode()}


TABLES = [table("/etc/ufw/user.rules", V4), table("/etc/ufw/user6.rules", V6)]


def rule(port, src="any", **kw):
    return {"rule": "allow", "port": str(port), "proto": "tcp", "from": src, "comment": "x", **kw}


def test_ssh_ports_come_from_configuration_when_given_and_the_connection_always():
    assert firewall_ssh_ports([2222], ["22"], ["port 22"], "10.213.0.1 50000 10.213.0.31 22") == [22, 2222]


def test_ssh_ports_are_detected_from_ansible_and_sshd_when_not_configured():
    lines = ["port 22", "port 2200", "permitrootlogin yes", "listenaddress 0.0.0.0:22"]
    assert firewall_ssh_ports([], ["", 22, ""], lines, "") == [22, 2200]


def test_declared_rules_put_ssh_first_and_fill_defaults():
    rules = firewall_declared_rules([{"port": 80, "owner": "nginx"}, {"port": "9100", "from": "10.0.0.1", "comment": "m",
                                                                     "owner": "firewall"}], [22], ["any"], "limit")
    assert rules[0] == SSH
    assert rules[1] == {"rule": "allow", "port": "80", "proto": "tcp", "from": "any", "comment": "chatstack nginx"}
    assert rules[2]["from"] == "10.0.0.1" and rules[2]["comment"] == "m"


@pytest.mark.parametrize("bad, word", [
    ({"port": "80", "rule": "permit"}, "rule permit"),
    ({"port": "80", "proto": "sctp"}, "proto sctp"),
    ({"port": "http"}, "port http"),
    ({"proto": "tcp"}, "has no port"),
])
def test_declared_rules_refuse_wrong_input_naming_the_producer(bad, word):
    with pytest.raises(AnsibleFilterError, match=word) as err:
        firewall_declared_rules([{**bad, "owner": "monitoring"}], [22], ["any"])
    assert "monitoring" in str(err.value)


def test_no_ssh_port_refuses_to_enable_ufw():
    with pytest.raises(AnsibleFilterError, match="no SSH port"):
        firewall_declared_rules([], [], ["any"])


def test_table_parsing_reads_families_apps_interfaces_and_bans():
    parsed = ufw_table_rules(TABLES)
    assert len(parsed) == 9
    app = next(r for r in parsed if r["app"])
    assert app["direction"] == "in" and app["to_port"] == "22"
    iface = next(r for r in parsed if r["interface"])
    assert iface["interface"] == "eth0" and iface["direction"] == "in" and not iface["plain"]
    assert {r["family"] for r in parsed} == {"v4", "v6"}


def test_missing_rules_are_those_absent_from_a_family_ufw_keeps():
    declared = [SSH, rule(443), rule(80), rule(9100, "10.213.0.1"), rule(9100, "fd00::1")]
    missing = ufw_missing_rules(declared, TABLES)
    assert [(r["port"], r["from"]) for r in missing] == [("80", "any"), ("9100", "fd00::1")]


def test_only_families_with_a_table_count():
    declared = [SSH, rule(443)]
    assert ufw_missing_rules(declared, [table("/etc/ufw/user.rules", V4)]) == []


def test_without_tables_every_rule_is_missing():
    assert ufw_missing_rules([SSH, rule(80)], []) == [SSH, rule(80)]


def test_undeclared_rules_spare_ssh_apps_and_fail2ban_bans():
    declared = [SSH, rule(443), rule(9100, "10.213.0.1")]
    undeclared = ufw_undeclared_rules(TABLES, declared, [22])
    assert [(r["to_port"], r["from_ip"], r["interface"]) for r in undeclared] == [("9999", "0.0.0.0/0", ""), ("53", "0.0.0.0/0", "eth0")]
    assert undeclared[0]["rule"] == "allow" and undeclared[0]["direction"] == "in"


def test_a_rule_declared_from_another_source_is_pruned():
    undeclared = ufw_undeclared_rules(TABLES, [SSH, rule(443), rule(9100, "10.213.0.2")], [22])
    assert ("9100", "10.213.0.1") in [(r["to_port"], r["from_ip"]) for r in undeclared]


def test_settings_that_differ_from_ufw_files():
    files = {"/etc/default/ufw": 'IPV6=yes\nDEFAULT_INPUT_POLICY="DROP"\nDEFAULT_OUTPUT_POLICY="ACCEPT"\n'
                                 'DEFAULT_FORWARD_POLICY="ACCEPT"\n',
             "/etc/ufw/ufw.conf": "# comment\nENABLED=no\nLOGLEVEL=low\n"}
    policies = {"incoming": "deny", "outgoing": "allow", "routed": "deny"}
    assert ufw_settings_differ(files, policies, "low") == ["routed", "enabled"]
    assert ufw_settings_differ({}, policies, "low") == ["incoming", "outgoing", "routed", "logging", "enabled"]


def test_jails_start_with_sshd_and_recidive_and_later_names_win():
    jails = fail2ban_jails([{"name": "nginx-limit-req", "enabled": True}, {"name": "sshd", "enabled": False}],
                           [22, 2222], "systemd", True, "ufw")
    assert [j["name"] for j in jails] == ["sshd", "recidive", "nginx-limit-req"]
    assert jails[0] == {"name": "sshd", "enabled": False}
    assert fail2ban_jails([], [22], "auto", False, "ufw") == [{"name": "sshd", "enabled": True, "port": "22", "backend": "auto"}]


def test_a_jail_without_a_name_is_refused():
    with pytest.raises(AnsibleFilterError, match="needs a name"):
        fail2ban_jails([{"enabled": True}], [22], "auto", True, "ufw")


def test_jail_values_are_rendered_as_fail2ban_reads_them():
    assert fail2ban_value(True) == "true"
    assert fail2ban_value(["a.log", "b.log"]) == "a.log b.log"
    assert fail2ban_value(600) == "600"
