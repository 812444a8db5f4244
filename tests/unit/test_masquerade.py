"""Masquerade rules as text: what gets restored and how check() judges iptables-save."""
from __future__ import annotations

import pytest

from conf.flannel import Lease, LeaseAttrs, load_network_config
from daemon.dataplane import masquerade as mq


@pytest.fixture
def fake_iptables(monkeypatch):
    """Record iptables-restore input; serve iptables-save from a dict of tables."""
    calls: list[tuple[list[str], str | None]] = []
    tables: dict[tuple[str, str], list[str]] = {}

    def run(cmd, stdin):
        calls.append((cmd, stdin))
        return ""

    monkeypatch.setattr(mq, "_run", run)
    monkeypatch.setattr(mq, "_save", lambda fam, table: tables.get((fam.save, table), []))
    monkeypatch.setattr(mq, "_supports_random_fully", lambda tool: True)
    return calls, tables


def test_ipv4_rules_match_flannel(fake_iptables):
    m = mq.Masquerade("10.244.0.0/16", "10.244.1.0/24")
    nat = m.rules(m.families[0])["nat"]
    assert nat[1] == '-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN'
    assert nat[4].endswith("-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully")
    assert len(nat) == 6 and len(m.families) == 1


def test_no_random_fully_on_old_iptables(fake_iptables, monkeypatch):
    monkeypatch.setattr(mq, "_supports_random_fully", lambda tool: False)
    m = mq.Masquerade("10.244.0.0/16", "10.244.1.0/24")
    assert not any("random-fully" in r for r in m.rules(m.families[0])["nat"])


def test_ensure_is_one_batch_per_family_with_jumps_only_when_missing(fake_iptables):
    calls, tables = fake_iptables
    m = mq.Masquerade("10.244.0.0/16", "10.244.1.0/24", "fc00::/48", "fc00:0:0:1::/64")
    tables[("iptables-save", "nat")] = [m.JUMPS["nat"]]
    m.ensure()
    assert [c[0][0] for c in calls] == ["iptables-restore", "ip6tables-restore"]
    v4 = calls[0][1].splitlines()
    assert v4[:2] == ["*nat", ":FLANNEL-POSTRTG - [0:0]"]
    assert m.JUMPS["nat"] not in v4  # already there: not added twice
    assert m.JUMPS["filter"] in v4
    assert "ff00::/8" in calls[1][1]


def test_check_wants_every_rule_in_order(fake_iptables):
    _, tables = fake_iptables
    m = mq.Masquerade("10.244.0.0/16", "10.244.1.0/24")
    rules = m.rules(m.families[0])
    tables[("iptables-save", "nat")] = [m.JUMPS["nat"], *rules["nat"]]
    tables[("iptables-save", "filter")] = [m.JUMPS["filter"], *rules["filter"]]
    assert m.check()
    tables[("iptables-save", "nat")] = [m.JUMPS["nat"], *reversed(rules["nat"])]
    assert not m.check()
    tables[("iptables-save", "nat")] = rules["nat"]  # jump gone
    assert not m.check()


def test_built_from_config_and_lease(fake_iptables):
    config = load_network_config('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48"}')
    own = Lease(subnet="10.244.7.0/24", ipv6_subnet="fc00:0:0:7::/64",
                attrs=LeaseAttrs.model_validate({"PublicIP": "192.168.50.7"}))
    m = mq.Masquerade(config, own)
    assert [(f.network, f.subnet) for f in m.families] == [
        ("10.244.0.0/16", "10.244.7.0/24"), ("fc00::/48", "fc00:0:0:7::/64")]
