"""flanneletted driving the vxlan data plane: real etcd, real netlink, daemons in netns nodes.

What the control side promises the data plane: every peer lease becomes exactly
flannel's neighbour/FDB/route triple; a restart keeps subnet and VTEP MAC; a lease
removed in etcd leaves the peers; an etcd outage changes nothing, and afterwards the
watch carries on from where it was.
"""
from __future__ import annotations

import json
import signal
import sys
import time

import pytest

from tests.support.flanneletted import (PREFIX, SUBNETS, VXLAN_CONFIG, DaemonNode, Underlay,
                                         underlay, wait_for)  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)

ETCD_CONFIG = VXLAN_CONFIG  # what the `underlay` fixture puts in etcd


def plane(node: DaemonNode) -> dict:
    """What the kernel of a node holds for the overlay."""
    link = node.ip_json("link", "show", "flannel.1")[0]
    return {
        "link": (link["ifindex"], link["address"], link["mtu"]),
        "routes": sorted((r["dst"], r.get("gateway"), tuple(r.get("flags", [])))
                         for r in node.ip_json("route", "show", "dev", "flannel.1")),
        "neighs": sorted((n["dst"], n.get("lladdr"), tuple(n.get("state", [])))
                         for n in node.ip_json("neigh", "show", "dev", "flannel.1")),
        "fdb": sorted((f["mac"], f["dst"], f.get("state", ""))
                      for f in node.bridge_json("fdb", "show", "dev", "flannel.1") if "dst" in f),
    }


def lease_of(u: Underlay, node: DaemonNode) -> tuple[str, dict]:
    for key, value in u.etcd.get_prefix(SUBNETS).items():
        attrs = json.loads(value)
        if attrs["PublicIP"] == node.ip:
            return key[len(SUBNETS):], attrs
    raise AssertionError(f"no lease for {node.ip}")


def expected_for(peers: list[tuple[str, dict]]) -> dict:
    routes, neighs, fdb = [], [], []
    for key, attrs in peers:
        net, length = key.split("-")
        mac = attrs["BackendData"]["VtepMAC"]
        routes.append((f"{net}/{length}", net, ("onlink",)))
        neighs.append((net, mac, ("PERMANENT",)))
        fdb.append((mac, attrs["PublicIP"], "permanent"))
    return {"routes": sorted(routes), "neighs": sorted(neighs), "fdb": sorted(fdb)}


def entries(node: DaemonNode) -> dict:
    return {k: v for k, v in plane(node).items() if k != "link"}


def test_two_nodes_program_exactly_flannels_entries_for_each_other(underlay):
    a, b = underlay.node().start(), underlay.node().start()
    a.wait_ready(), b.wait_ready()
    la, lb = lease_of(underlay, a), lease_of(underlay, b)
    assert la[0] != lb[0]
    for node, own, peer in ((a, la, lb), (b, lb, la)):
        assert own[1]["BackendType"] == "vxlan" and own[1]["BackendData"]["VNI"] == 1
        assert plane(node)["link"][1] == own[1]["BackendData"]["VtepMAC"]
        assert plane(node)["link"][2] == 1450
        wait_for("the peer's entries", lambda: entries(node) == expected_for([peer]), node=node)
    wait_for("objects metric", lambda: a.metric("kernel_objects_programmed") == 3, node=a)


def test_entries_deleted_by_hand_come_back(underlay):
    a, b = underlay.node().start(), underlay.node().start()
    a.wait_ready(), b.wait_ready()
    want = expected_for([lease_of(underlay, b)])
    wait_for("entries", lambda: entries(a) == want, node=a)
    route = want["routes"][0][0]
    a.ns.run("ip", "route", "del", route, "dev", "flannel.1")
    a.ns.run("bridge", "fdb", "del", want["fdb"][0][0], "dev", "flannel.1", "dst", want["fdb"][0][1])
    wait_for("repair", lambda: entries(a) == want, timeout=5, node=a)


def test_restart_keeps_subnet_vtep_mac_and_the_device(underlay):
    a, b = underlay.node().start(), underlay.node().start()
    env = a.wait_ready()
    b.wait_ready()
    wait_for("b knows a", lambda: entries(b) == expected_for([lease_of(underlay, a)]), node=b)
    before_a, before_b = plane(a), plane(b)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        a.stop(sig)
        assert plane(a) == before_a  # nothing torn down on the way out
        since = time.time()
        assert a.start().wait_ready(since=since).subnet == env.subnet
        assert plane(a)["link"] == before_a["link"]  # same ifindex, same MAC: not recreated
        assert plane(b) == before_b  # the peer saw the same lease again: nothing to change


def test_a_lease_removed_in_etcd_leaves_its_peers(underlay):
    a, b, c = underlay.node().start(), underlay.node().start(), underlay.node().start()
    for n in (a, b, c):
        n.wait_ready()
    lb, lc = lease_of(underlay, b), lease_of(underlay, c)
    wait_for("both peers", lambda: entries(a) == expected_for([lb, lc]), node=a)
    c.stop(signal.SIGKILL)  # a dead node cannot take its lease back
    underlay.etcd.ctl("del", SUBNETS + lc[0])
    wait_for("c gone from a", lambda: entries(a) == expected_for([lb]), node=a)
    wait_for("leases metric", lambda: a.metric("leases_known") == 2, node=a)


def test_etcd_down_for_30s_changes_nothing_and_the_watch_resumes(underlay):
    a, b = underlay.node().start(), underlay.node().start()
    a.wait_ready(), b.wait_ready()
    wait_for("entries", lambda: entries(a) == expected_for([lease_of(underlay, b)]), node=a)
    before = {n.index: plane(n) for n in (a, b)}
    underlay.etcd.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # many reconcile ticks (1 s) run while etcd is away
        time.sleep(5)
        for n in (a, b):
            assert n.proc.poll() is None, n.log()
            assert plane(n) == before[n.index]
            assert n.http("/readyz")[0] == 200
    assert a.metric("etcd_connected") == 0 and a.metric("etcd_reconnects_total") == 0
    underlay.etcd.start()
    wait_for("watch back", lambda: a.metric("etcd_connected") == 1, timeout=30, node=a)
    assert a.metric("etcd_reconnects_total") == 1
    assert {n.index: plane(n) for n in (a, b)} == before
    c = underlay.node().start()  # news after the outage still arrive
    c.wait_ready()
    want = expected_for([lease_of(underlay, b), lease_of(underlay, c)])
    wait_for("the new node", lambda: entries(a) == want, node=a)


STATUS = "import sys; from cni_plugin.status import main; sys.exit(main(sys.argv[1:]))"


def test_flannelette_status_asks_the_daemon_over_the_cni_socket(underlay):
    a, b = underlay.node(), underlay.node().start()
    a.start("--cni-socket", a.cni_socket)
    env = a.wait_ready()
    b.wait_ready()
    wait_for("entries", lambda: len(entries(a)["routes"]) == 1, node=a)
    out = a.ns.run(sys.executable, "-c", STATUS, "--socket", a.cni_socket, "--json").stdout
    report = json.loads(out)
    assert report["node"]["subnet"] == str(env.subnet.network)
    assert report["node"]["vtepMAC"] == plane(a)["link"][1]
    rows = {e["publicIP"]: e for e in report["leases"]}
    assert set(rows) == {a.ip, b.ip} and rows[b.ip]["programmed"] is True
    assert rows[b.ip]["vtepMAC"] == plane(b)["link"][1]
    assert time.time() + 80000 < rows[b.ip]["expires"] <= time.time() + 86400
    table = a.ns.run(sys.executable, "-c", STATUS, "--socket", a.cni_socket).stdout.decode()
    assert b.ip in table and "yes" in table


def test_dual_stack_leases_subnet_env_and_ipv6_entries(underlay):
    underlay.etcd.put(PREFIX + "/config", '{"Network": "10.244.0.0/16", "EnableIPv6": true, '
                      '"IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}')
    a, b = underlay.node(ipv6=True).start(), underlay.node(ipv6=True).start()
    env = a.wait_ready()
    b.wait_ready()
    key, attrs = lease_of(underlay, a)
    v4, v6 = key.split("&")
    assert v4 == f"{env.subnet.network.network_address}-24"
    assert v6 == f"{env.ipv6_subnet.network.network_address}-64" and v6.startswith("fc00:")
    assert attrs["PublicIPv6"] == a.ipv6 and env.ipv6_subnet.ip == env.ipv6_subnet.network[1]
    assert [str(n) for n in env.ipv6_networks] == ["fc00::/48"]
    peer_v6 = lease_of(underlay, b)[0].split("&")[1].replace("-", "/")
    wait_for("the peer's IPv6 route", lambda: any(
        r["dst"] == peer_v6 for r in a.ip_json("-6", "route", "show", "dev", "flannel-v6.1")), node=a)


def test_ip_masq_installs_flannels_rules_and_repairs_them(underlay):
    a = underlay.node().start("--ip-masq")
    env = a.wait_ready()
    assert env.ipmasq is True
    nat = a.ns.out("iptables-save", "-t", "nat")
    assert "-A POSTROUTING" in nat and "-j FLANNEL-POSTRTG" in nat
    assert f"-A FLANNEL-POSTRTG -s {env.subnet.network} -d 10.244.0.0/16" in nat
    a.ns.run("iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    wait_for("the rules back", lambda: f"-s {env.subnet.network} -d 10.244.0.0/16"
             in a.ns.out("iptables-save", "-t", "nat"), timeout=10, node=a)
    assert a.metric("masquerade_repairs_total") == 1
