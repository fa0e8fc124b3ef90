from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from contributions import contribution_producers, merge_contribution_dicts, merge_contribution_lists


def test_lists_are_concatenated_in_producer_name_order():
    merged = merge_contribution_lists({"redis": [{"port": "6379"}], "nginx": [{"port": "80"}, {"port": "443"}]})
    assert [r["port"] for r in merged] == ["80", "443", "6379"]


def test_each_item_records_its_producer_without_changing_the_input():
    given = {"nginx": [{"port": "80"}]}
    merged = merge_contribution_lists(given, "firewall_contributions", "owner")
    assert merged == [{"port": "80", "owner": "nginx"}]
    assert given == {"nginx": [{"port": "80"}]}


def test_empty_and_missing_contributions_give_nothing():
    assert merge_contribution_lists({"agent": [], "nginx": None}) == []
    assert merge_contribution_lists(None) == []
    assert merge_contribution_dicts({"redis": {}}) == {}
    assert contribution_producers({"agent": [], "nginx": [{"port": "80"}]}) == ["nginx"]


def test_dicts_merge_with_the_later_producer_winning():
    merged = merge_contribution_dicts({"zeta": {"net.core.somaxconn": 2048},
                                       "redis": {"net.core.somaxconn": 1024, "vm.overcommit_memory": 1}})
    assert merged == {"net.core.somaxconn": 2048, "vm.overcommit_memory": 1}


@pytest.mark.parametrize("bad, message", [
    (["not", "a", "mapping"], "must map producer names"),
    ({"nginx": "80/tcp"}, "contribution of nginx must be a list"),
    ({"nginx": {"port": "80"}}, "contribution of nginx must be a list"),
])
def test_wrong_list_shapes_name_the_owner_and_producer(bad, message):
    with pytest.raises(AnsibleFilterError, match=message) as err:
        merge_contribution_lists(bad, "firewall_contributions")
    assert "firewall_contributions" in str(err.value)


def test_items_must_be_mappings_when_the_producer_is_recorded():
    with pytest.raises(AnsibleFilterError, match="nginx contributed '80'"):
        merge_contribution_lists({"nginx": ["80"]}, "firewall_contributions", "owner")


def test_wrong_dict_shape_names_the_producer():
    with pytest.raises(AnsibleFilterError, match="contribution of redis must be a mapping"):
        merge_contribution_dicts({"redis": [["vm.overcommit_memory", 1]]}, "sysctl_contributions")
