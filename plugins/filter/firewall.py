"""The firewall role's data work: SSH ports, declared rules, UFW's rule tables, fail2ban jails.

UFW keeps its rules in /etc/ufw/user.rules (IPv4) and user6.rules (IPv6), one
``### tuple ### <rule> <proto> <to_port> <to_ip> <from_port> <from_ip> <direction> [comment=hex]``
line per rule (application rules carry two extra names before the direction). The role reads those
files once and compares them with what it declares, so a converge that changes nothing calls the
ufw module for nothing.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from ansible.errors import AnsibleFilterError

RULES = ("allow", "limit", "deny", "reject")
PROTOS = ("tcp", "udp", "any")
PORT_RE = re.compile(r"^[0-9]+(:[0-9]+)?$")
TUPLE = "### tuple ### "
SSH_COMMENT = "chatstack ssh"
# UFW's names for the default policies in /etc/default/ufw.
POLICY_WORDS = {"allow": "ACCEPT", "deny": "DROP", "reject": "REJECT"}
POLICY_KEYS = {"incoming": "DEFAULT_INPUT_POLICY", "outgoing": "DEFAULT_OUTPUT_POLICY",
               "routed": "DEFAULT_FORWARD_POLICY"}


def firewall_ssh_ports(configured: Sequence, detected: Sequence, sshd_config_lines: Sequence[str] | None,
                       ssh_connection: str = "") -> list[int]:
    """Ports SSH must stay open on: the configured ones, else those Ansible and sshd -T report;
    the port of the current connection (4th field of SSH_CONNECTION) always."""
    if configured:
        found = list(configured)
    else:
        found = list(detected)
        for line in sshd_config_lines or []:
            m = re.fullmatch(r"port ([0-9]+)", line.strip())
            if m:
                found.append(m.group(1))
    fields = (ssh_connection or "").split()
    if len(fields) >= 4:
        found.append(fields[3])
    return sorted({int(p) for p in (str(p).strip() for p in found) if p.isdigit()})


def firewall_declared_rules(rules: Iterable[Mapping], ssh_ports: Sequence[int], ssh_from: Sequence[str],
                            ssh_rule: str = "limit") -> list[dict]:
    """SSH rules first, then ``rules`` (each with its ``owner``), with defaults filled in and checked."""
    if not ssh_ports:
        raise AnsibleFilterError("firewall: no SSH port found (firewall_ssh_ports, ansible_port, SSH_CONNECTION, "
                                 "sshd -T); refusing to enable UFW")
    out = [{"rule": ssh_rule, "port": str(port), "proto": "tcp", "from": str(src), "comment": SSH_COMMENT}
           for port in ssh_ports for src in ssh_from]
    for r in rules:
        if "port" not in r:
            raise AnsibleFilterError(f"firewall: a rule of {r.get('owner', '?')} has no port: {dict(r)}")
        rule = {"rule": str(r.get("rule") or "allow"), "port": str(r["port"]), "proto": str(r.get("proto") or "tcp"),
                "from": str(r.get("from") or "any"), "comment": str(r.get("comment") or f"chatstack {r.get('owner', 'firewall')}")}
        bad = ([f"rule {rule['rule']} (allow|limit|deny|reject)"] if rule["rule"] not in RULES else []) \
            + ([f"proto {rule['proto']} (tcp|udp|any)"] if rule["proto"] not in PROTOS else []) \
            + ([f"port {rule['port']} (a port or a range a:b)"] if not PORT_RE.match(rule["port"]) else [])
        if bad:
            raise AnsibleFilterError(f"firewall: rule of {r.get('owner', '?')} {dict(r)}: wrong {', '.join(bad)}")
        out.append(rule)
    return out


def _rule_keys(rule: Mapping) -> list[str]:
    """The keys UFW's tables give this rule: one per address family it applies to."""
    src = rule["from"]
    keys = []
    if src == "any" or ":" not in src:
        keys.append(f"v4 {rule['rule']} {rule['proto']} {rule['port']} {'0.0.0.0/0' if src == 'any' else src}")
    if src == "any" or ":" in src:
        keys.append(f"v6 {rule['rule']} {rule['proto']} {rule['port']} {'::/0' if src == 'any' else src}")
    return keys


def ufw_table_rules(tables: Iterable[Mapping]) -> list[dict]:
    """Parse UFW's rule tables: ``tables`` are ``{source, content}`` (slurp results, content base64
    or already decoded with ``decoded: true``)."""
    import base64

    out = []
    for table in tables:
        source = str(table.get("source") or table.get("path") or "")
        content = table.get("content", "")
        text = content if table.get("decoded") else base64.b64decode(content).decode()
        family = "v6" if source.endswith("user6.rules") else "v4"
        for line in text.splitlines():
            if not line.startswith(TUPLE):
                continue
            f = line[len(TUPLE):].split()
            app = not (f[6] in ("in", "out") or f[6].startswith(("in_", "out_")))
            direction = f[8] if app else f[6]
            out.append({
                "family": family, "rule": f[0].split("_")[0], "proto": f[1], "to_port": f[2], "to_ip": f[3],
                "from_port": f[4], "from_ip": f[5], "direction": direction.split("_")[0],
                "interface": direction.split("_", 1)[1] if "_" in direction else "", "app": app,
                "key": f"{family} {f[0]} {f[1]} {f[2]} {f[5]}",
                "plain": (not app) and f[3] in ("0.0.0.0/0", "::/0") and f[4] == "any" and direction == "in",
                "line": line[len(TUPLE):],
            })
    return out


def ufw_missing_rules(declared: Iterable[Mapping], tables: Iterable[Mapping]) -> list[dict]:
    """Declared rules UFW does not hold yet, in any address family it keeps a table for (no table
    at all: every rule is missing)."""
    tables = list(tables)
    families = {"v6" if str(t.get("source") or t.get("path") or "").endswith("user6.rules") else "v4" for t in tables}
    have = {r["key"] for r in ufw_table_rules(tables) if r["plain"]}
    return [r for r in declared
            if not families or any(k not in have for k in _rule_keys(r) if k.split()[0] in families)]


def ufw_undeclared_rules(tables: Iterable[Mapping], declared: Iterable[Mapping], ssh_ports: Sequence[int]) -> list[dict]:
    """Rules in UFW's tables that nothing declares. Never SSH ports, application rules or
    fail2ban bans (deny/reject from one address to any port)."""
    want = {k for r in declared for k in _rule_keys(r)}
    ssh = {str(p) for p in ssh_ports}
    out = []
    for r in ufw_table_rules(tables):
        is_ban = r["rule"] in ("deny", "reject") and r["proto"] == "any" and r["to_port"] == "any" and r["from_port"] == "any"
        if r["to_port"] in ssh or is_ban or r["app"] or (r["plain"] and r["key"] in want):
            continue
        out.append({k: r[k] for k in ("rule", "proto", "to_port", "to_ip", "from_port", "from_ip", "direction",
                                      "interface", "line")})
    return out


def ufw_settings_differ(files: Mapping[str, str], policies: Mapping[str, str], logging: str) -> list[str]:
    """What UFW's own configuration lacks: ``files`` maps /etc/default/ufw and /etc/ufw/ufw.conf to
    their text. Returns the names of the settings to apply (``incoming``, ``outgoing``, ``routed``,
    ``logging``, ``enabled``)."""
    def values(text: str) -> dict[str, str]:
        pairs = (ln.split("=", 1) for ln in (text or "").splitlines() if "=" in ln and not ln.lstrip().startswith("#"))
        return {k.strip(): v.strip().strip('"') for k, v in pairs}

    default = values(files.get("/etc/default/ufw", ""))
    conf = values(files.get("/etc/ufw/ufw.conf", ""))
    out = [d for d, policy in policies.items() if default.get(POLICY_KEYS[d]) != POLICY_WORDS[policy]]
    if conf.get("LOGLEVEL", "") != logging:
        out.append("logging")
    if conf.get("ENABLED", "") != "yes":
        out.append("enabled")
    return out


def fail2ban_jails(jails: Iterable[Mapping], ssh_ports: Sequence[int], sshd_backend: str, recidive: bool,
                   banaction: str) -> list[dict]:
    """sshd, recidive (when on), then the given jails; a later jail of the same name replaces an
    earlier one."""
    out: dict[str, dict] = {"sshd": {"name": "sshd", "enabled": True, "port": ",".join(str(p) for p in ssh_ports),
                                     "backend": sshd_backend}}
    if recidive:
        out["recidive"] = {"name": "recidive", "enabled": True, "backend": "auto", "logpath": "/var/log/fail2ban.log",
                           "banaction": banaction, "bantime": "1w", "findtime": "1d", "maxretry": 5}
    for jail in jails:
        if not isinstance(jail, Mapping) or not jail.get("name"):
            raise AnsibleFilterError(f"firewall: a fail2ban jail needs a name: {jail!r}")
        out[str(jail["name"])] = dict(jail)
    return list(out.values())


def fail2ban_value(value) -> str:
    """A jail setting as fail2ban reads it (booleans lower case, lists space-separated)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return " ".join(str(v) for v in value)
    return str(value)


class FilterModule:
    def filters(self):
        return {
            "firewall_ssh_ports": firewall_ssh_ports,
            "firewall_declared_rules": firewall_declared_rules,
            "ufw_table_rules": ufw_table_rules,
            "ufw_missing_rules": ufw_missing_rules,
            "ufw_undeclared_rules": ufw_undeclared_rules,
            "ufw_settings_differ": ufw_settings_differ,
            "fail2ban_jails": fail2ban_jails,
            "fail2ban_value": fail2ban_value,
        }
