"""The harness's underlay on its own: nodes on-link and behind the router, etcd reachable,
nothing left behind. Independent of the daemon, so a harness fault is told apart from a
data-plane fault."""
from __future__ import annotations

import os

import pytest

from tests.e2e.capture import Capture
from tests.e2e.resources import Resources
from tests.e2e.topology import ETCD_IP, Underlay
from tests.support.etcd import EtcdServer
from tests.support.netns import NetNS

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def underlay():
    res = Resources()
    try:
        ul = Underlay("flt-topo", with_router=True, resources=res)
        nodes = []
        for name, routed in (("a", False), ("b", False), ("c", True)):
            res.namespaces.append(f"flt-topo-{name}")
            ns = NetNS(f"flt-topo-{name}")
            nodes.append((ns, ul.attach(ns, f"port-{name}", routed=routed)))
        yield ul, nodes, res
    finally:
        assert res.teardown() == []


def test_on_link_and_routed_nodes_reach_each_other_and_etcd(underlay):
    ul, nodes, _ = underlay
    (a, att_a), (b, att_b), (c, att_c) = nodes
    assert a.run("ping", "-c1", "-W1", att_b.ip, check=False).returncode == 0
    assert a.run("ping", "-c1", "-W1", att_c.ip, check=False).returncode == 0
    assert c.run("ping", "-c1", "-W1", ETCD_IP, check=False).returncode == 0
    # On-link: b's address resolves by ARP from a; c's goes through the router's MAC.
    assert "via" not in a.out("ip", "route", "get", att_b.ip)
    assert "via" in a.out("ip", "route", "get", att_c.ip)
    with EtcdServer(ul.ns, ETCD_IP) as etcd:
        etcd.put("/flt/k", "v")
        out = c.run("etcdctl", "--endpoints", etcd.endpoint, "get", "/flt/k",
                    env=dict(os.environ, ETCDCTL_API="3")).stdout.decode()
        assert out.split() == ["/flt/k", "v"]


def test_capture_sees_a_nodes_traffic_on_its_underlay_port(underlay):
    ul, nodes, _ = underlay
    (a, att_a), (b, att_b), _ = nodes
    with Capture(ul.ns, att_a.port) as cap:
        a.run("ping", "-c2", "-i0.1", "-W1", att_b.ip)
    seen = {(p.src, p.dst, p.proto) for p in cap.packets()}
    assert (att_a.ip, att_b.ip, 1) in seen and (att_b.ip, att_a.ip, 1) in seen


def test_teardown_removes_namespaces():
    res = Resources()
    Underlay("flt-topo2", with_router=True, resources=res)
    assert all(os.path.exists(f"/run/netns/{n}") for n in res.namespaces)
    assert res.teardown() == []
    assert not any(os.path.exists(f"/run/netns/{n}") for n in res.namespaces)
