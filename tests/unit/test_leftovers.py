"""scripts/test.py's leftover check: only what the scenarios added fails `make test`."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "chatstack_test_script", Path(__file__).resolve().parents[2] / "scripts" / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

CLEAN = {"bridge": False, "nft_table": False, "mounts": [], "machines": [], "ip_forward": "0"}


def test_a_stale_mount_removed_by_a_scenario_is_not_a_leftover():
    stale = dict(CLEAN, mounts=["/var/lib/chatstack-testhosts/machines/noble-stack/root"])
    assert test_script.new_leftovers(stale, CLEAN) == {}


def test_what_the_scenarios_added_is_named():
    after = dict(CLEAN, bridge=True, ip_forward="1", machines=["default-stack"],
                 mounts=["/var/lib/chatstack-testhosts/machines/default-stack/root"])
    assert test_script.new_leftovers(CLEAN, after) == {
        "bridge": True, "ip_forward": "1", "machines": ["default-stack"],
        "mounts": ["/var/lib/chatstack-testhosts/machines/default-stack/root"]}


def test_an_unchanged_controller_has_no_leftovers():
    assert test_script.new_leftovers(CLEAN, dict(CLEAN)) == {}
