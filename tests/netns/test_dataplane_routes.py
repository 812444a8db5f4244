"""DirectRouting and host-gw in netns nodes: two nodes share a segment, a third sits
behind the switch namespace acting as a router."""
from __future__ import annotations

import pytest

from tests.support.dataplane_nodes import (lines, ping, programmed, reconcile,
                                           start_nodes, underlay)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

DIRECT = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}}
HOST_GW = {"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}


@pytest.fixture
def routed_underlay(underlay):
    underlay.add_segment()
    return underlay


def test_direct_routing_uses_plain_routes_on_the_segment_only(routed_underlay, tmp_path):
    nodes = start_nodes(routed_underlay, ["br0", "br0", "br1"], DIRECT, str(tmp_path))
    for node in nodes:
        reconcile(node, nodes)
    a, b, c = nodes
    mac_c = c.lease.attrs.backend_data["VtepMAC"]
    assert "10.244.2.0/24 via 192.168.50.11 dev eth0" in lines(a, "ip", "route")
    assert lines(a, "ip", "route", "show", "dev", "flannel.1") == {"10.244.3.0/24 via 10.244.3.0 onlink"}
    assert lines(a, "ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent") == {
        f"10.244.3.0 lladdr {mac_c} PERMANENT"}
    assert lines(a, "bridge", "fdb", "show", "dev", "flannel.1") == {
        f"{mac_c} dst 192.168.60.12 self permanent"}
    assert ping(a, "10.244.1.1", "10.244.2.1")  # direct
    assert ping(a, "10.244.1.1", "10.244.3.1")  # vxlan through the router
    assert ping(c, "10.244.3.1", "10.244.2.1")


def test_direct_route_is_repaired(routed_underlay, tmp_path):
    nodes = start_nodes(routed_underlay, ["br0", "br0"], DIRECT, str(tmp_path))
    a = nodes[0]
    reconcile(a, nodes)
    a.ns.run("ip", "route", "del", "10.244.2.0/24")
    assert reconcile(a, nodes).set == 1
    assert "10.244.2.0/24 via 192.168.50.11 dev eth0" in lines(a, "ip", "route")


def test_host_gw_routes_and_refuses_a_peer_behind_a_router(routed_underlay, tmp_path):
    nodes = start_nodes(routed_underlay, ["br0", "br0", "br1"], HOST_GW, str(tmp_path))
    a, b, c = nodes
    stats = reconcile(a, nodes)
    reconcile(b, nodes)
    assert (stats.wanted, stats.refused, stats.errors) == (1, 1, 0)
    routes = lines(a, "ip", "route")
    assert "10.244.2.0/24 via 192.168.50.11 dev eth0" in routes
    assert not any(r.startswith("10.244.3.0/24") for r in routes)
    assert a.worker.call(programmed, [b.lease, c.lease]) == [True, False]
    assert not a.ns.out("ip", "link", "show", "type", "vxlan").strip()
    assert ping(a, "10.244.1.1", "10.244.2.1")


def test_host_gw_repairs_and_removes(routed_underlay, tmp_path):
    nodes = start_nodes(routed_underlay, ["br0", "br0", "br0"], HOST_GW, str(tmp_path))
    a, b, c = nodes
    reconcile(a, nodes)
    a.ns.run("ip", "route", "replace", "10.244.2.0/24", "via", "192.168.50.12", "dev", "eth0")
    stats = reconcile(a, [a, b])
    assert (stats.set, stats.removed) == (1, 1)
    routes = lines(a, "ip", "route")
    assert "10.244.2.0/24 via 192.168.50.11 dev eth0" in routes
    assert not any(r.startswith("10.244.3.0/24") for r in routes)
    assert "10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1" in routes  # own: untouched
