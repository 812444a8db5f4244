"""Dual stack: the IPv6 VTEP flannel-v6.<VNI> beside flannel.1, and IPv6 host-gw routes."""
from __future__ import annotations

import pytest

from tests.support.dataplane_nodes import lines, ping, reconcile, start_nodes
from tests.support.dataplane_nodes import underlay  # noqa: F401 (fixture)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

DUAL = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48",
        "Backend": {"Type": "vxlan"}}


def test_ipv6_vtep_entries_and_traffic(underlay, tmp_path):
    nodes = start_nodes(underlay, ["br0", "br0"], DUAL, str(tmp_path))
    for node in nodes:
        reconcile(node, nodes)
    a, b = nodes
    mac6 = b.lease.attrs.backend_v6_data["VtepMAC"]
    assert a.lease.attrs.backend_v6_data["VtepMAC"] != a.lease.attrs.backend_data["VtepMAC"]
    assert str(a.lease.attrs.public_ipv6) == "fd50::10"
    link = a.ns.out("ip", "-d", "link", "show", "flannel-v6.1")
    assert "vxlan id 1 local fd50::10 dev eth0" in link and "mtu 1430" in link
    assert "mtu 1430" in a.ns.out("ip", "link", "show", "flannel.1")
    assert "inet6 fc00:0:0:1::/128" in a.ns.out("ip", "-6", "addr", "show", "dev", "flannel-v6.1")
    assert lines(a, "ip", "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent") == {
        f"fc00:0:0:2:: lladdr {mac6} PERMANENT"}
    assert lines(a, "bridge", "fdb", "show", "dev", "flannel-v6.1") == {
        f"{mac6} dst fd50::11 self permanent"}
    v6routes = lines(a, "ip", "-6", "route", "show", "dev", "flannel-v6.1")
    assert "fc00:0:0:2::/64 via fc00:0:0:2:: metric 1024 onlink pref medium" in v6routes
    assert "10.244.2.0/24 via 10.244.2.0 onlink" in lines(a, "ip", "route", "show", "dev", "flannel.1")
    assert ping(a, "fc00:0:0:1::1", "fc00:0:0:2::1")
    assert ping(a, "10.244.1.1", "10.244.2.1")
    assert reconcile(a, nodes).set == 0  # converged: the IPv6 dump reads back what we wrote


def test_ipv6_entries_repaired(underlay, tmp_path):
    nodes = start_nodes(underlay, ["br0", "br0"], DUAL, str(tmp_path))
    a = nodes[0]
    reconcile(a, nodes)
    a.ns.run("ip", "-6", "route", "del", "fc00:0:0:2::/64")
    a.ns.run("ip", "link", "del", "flannel-v6.1")
    stats = reconcile(a, nodes)
    assert stats.recreated == ["flannel-v6.1"] and stats.errors == 0
    assert "fc00:0:0:2::/64 via fc00:0:0:2:: metric 1024 onlink pref medium" in lines(
        a, "ip", "-6", "route", "show", "dev", "flannel-v6.1")


def test_ipv6_host_gw(underlay, tmp_path):
    conf = dict(DUAL, Backend={"Type": "host-gw"})
    nodes = start_nodes(underlay, ["br0", "br0"], conf, str(tmp_path))
    for node in nodes:
        reconcile(node, nodes)
    a = nodes[0]
    assert any(r.startswith("fc00:0:0:2::/64 via fd50::11 dev eth0") for r in lines(a, "ip", "-6", "route"))
    assert ping(a, "fc00:0:0:1::1", "fc00:0:0:2::1")
