from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from published import first_published

HOSTVARS = {
    "data1": {"ansible_host": "10.0.0.1"},
    "data2": {"ansible_host": "10.0.0.2", "redis_app_user": "chatagent"},
    "data3": {"redis_app_user": "chatagent"},
}


def test_the_first_host_that_published_serves():
    assert first_published(["data1", "data2", "data3"], HOSTVARS, "redis_app_user") == "data2"


def test_inventory_order_decides_between_publishers():
    assert first_published(["data3", "data2"], HOSTVARS, "redis_app_user") == "data3"


def test_without_a_publisher_the_first_host_of_the_group():
    assert first_published(["data1", "data2"], HOSTVARS, "mysql_app_user") == "data1"


def test_a_host_missing_from_hostvars_is_passed_over():
    assert first_published(["gone", "data2"], HOSTVARS, "redis_app_user") == "data2"


def test_an_empty_or_missing_group_gives_an_empty_name():
    assert first_published([], HOSTVARS, "redis_app_user") == ""
    assert first_published(None, HOSTVARS, "redis_app_user") == ""


def test_a_single_name_instead_of_a_list_is_refused():
    with pytest.raises(AnsibleFilterError, match="list of host names"):
        first_published("data1", HOSTVARS, "redis_app_user")
