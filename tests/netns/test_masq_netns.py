"""Masquerade rules installed with real iptables inside a test namespace."""
from __future__ import annotations

import pytest

from tests.support.dataplane_nodes import NodeWorker
from tests.support.netns import sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def masq_call(state, method, *args):
    from daemon.dataplane.masquerade import Masquerade

    if "masq" not in state:
        state["masq"] = Masquerade("10.244.0.0/16", "10.244.3.0/24", "fc00::/48", "fc00:0:0:3::/64")
    return getattr(state["masq"], method)(*args)


@pytest.fixture
def worker(netns):
    w = NodeWorker(netns)
    try:
        yield w
    finally:
        w.close()


def test_rules_installed_checked_and_repaired(netns, worker):
    root_before = sh("iptables-save").stdout
    assert worker.call(masq_call, "check") is False
    worker.call(masq_call, "ensure")
    assert worker.call(masq_call, "check") is True
    nat = netns.out("iptables-save", "-t", "nat")
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in nat
    assert ('-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment '
            '"flanneld masq" -j MASQUERADE --random-fully') in nat
    assert "-A FLANNEL-FWD -d 10.244.0.0/16" in netns.out("iptables-save", "-t", "filter")
    assert "-A FLANNEL-POSTRTG -s fc00:0:0:3::/64 -d fc00::/48" in netns.out("ip6tables-save", "-t", "nat")

    netns.run("iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
    assert worker.call(masq_call, "check") is False
    worker.call(masq_call, "ensure")
    worker.call(masq_call, "ensure")  # idempotent: no duplicate jumps or rules
    assert worker.call(masq_call, "check") is True
    assert netns.out("iptables-save", "-t", "nat").count("-j FLANNEL-POSTRTG") == 1
    assert netns.out("iptables-save", "-t", "nat").count("-A FLANNEL-POSTRTG") == 6

    netns.run("iptables", "-t", "filter", "-D", "FORWARD", "1")
    assert worker.call(masq_call, "check") is False
    assert sh("iptables-save").stdout.count(b"flanneld") == root_before.count(b"flanneld")
