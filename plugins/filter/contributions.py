"""Merge what producer roles hand to an owner role (docs/contracts.md, "Contributions").

An owner role (sysctl, firewall, logrotate) receives ``<owner>_contributions``: a mapping of
producer name to that producer's data, wired by playbooks/site.yml. Producers are merged in name
order so the result never depends on play order; a producer that has nothing to give hands over an
empty value (or is left out).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ansible.errors import AnsibleFilterError


def _producers(contributions: Mapping, owner: str) -> list[tuple[str, object]]:
    if contributions is None:
        return []
    if not isinstance(contributions, Mapping):
        raise AnsibleFilterError(f"{owner}: contributions must map producer names to data, got "
                                 f"{type(contributions).__name__}")
    return sorted((str(name), data) for name, data in contributions.items() if data)


def merge_contribution_lists(contributions: Mapping, owner: str = "contributions",
                             producer_key: str | None = None) -> list:
    """Concatenate list contributions; with ``producer_key`` each item records its producer."""
    out: list = []
    for name, items in _producers(contributions, owner):
        if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
            raise AnsibleFilterError(f"{owner}: the contribution of {name} must be a list, got "
                                     f"{type(items).__name__}")
        for item in items:
            if producer_key is not None:
                if not isinstance(item, Mapping):
                    raise AnsibleFilterError(f"{owner}: {name} contributed {item!r}, not a mapping")
                item = {**item, producer_key: name}
            out.append(item)
    return out


def merge_contribution_dicts(contributions: Mapping, owner: str = "contributions") -> dict:
    """Combine mapping contributions; a later producer (by name) wins on a shared key."""
    out: dict = {}
    for name, values in _producers(contributions, owner):
        if not isinstance(values, Mapping):
            raise AnsibleFilterError(f"{owner}: the contribution of {name} must be a mapping, got "
                                     f"{type(values).__name__}")
        out.update(values)
    return out


def contribution_producers(contributions: Mapping, owner: str = "contributions") -> list[str]:
    """Names of the producers that contributed something."""
    return [name for name, _ in _producers(contributions, owner)]


class FilterModule:
    def filters(self):
        return {
            "merge_contribution_lists": merge_contribution_lists,
            "merge_contribution_dicts": merge_contribution_dicts,
            "contribution_producers": contribution_producers,
        }
