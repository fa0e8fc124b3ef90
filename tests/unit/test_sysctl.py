from __future__ import annotations

from sysctl import sysctl_plan, sysctl_running

SETTINGS = {"net.core.somaxconn": 4096, "net.ipv4.ip_local_port_range": "10240 65000", "vm.swappiness": 10,
            "net.core.rmem_max": 16777216, "net.ipv4.absent_key": 1}
RUNNING = ["net.core.somaxconn = 4096", "net.ipv4.ip_local_port_range = 10240\t65000", "vm.swappiness = 60",
           "net.core.rmem_max = 212992", "sysctl: cannot stat /proc/sys/net/ipv4/absent_key: No such file"]


def test_running_values_parse_and_skip_error_lines():
    running = sysctl_running(RUNNING)
    assert running["net.ipv4.ip_local_port_range"] == "10240\t65000"
    assert "net.ipv4.absent_key" not in running and len(running) == 4


def test_on_a_host_every_present_key_applies_and_whitespace_is_not_a_difference():
    plan = sysctl_plan(SETTINGS, sysctl_running(RUNNING), False, ["net.core.rmem_max"])
    assert plan["differing"] == ["net.core.rmem_max", "vm.swappiness"]
    assert plan["skipped"] == ["net.ipv4.absent_key"]


def test_in_a_container_only_namespaced_keys_outside_the_host_only_list_apply():
    plan = sysctl_plan(SETTINGS, sysctl_running(RUNNING), True, ["net.core.rmem_max"])
    assert plan["applicable"] == ["net.core.somaxconn", "net.ipv4.ip_local_port_range"]
    assert plan["differing"] == []
    assert plan["skipped"] == ["net.core.rmem_max", "net.ipv4.absent_key", "vm.swappiness"]
