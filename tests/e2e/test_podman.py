"""podman as a runtime: Debian's podman 4.3 with the CNI backend on two flannelette nodes.

Two vxlan nodes run flanneletted; on each, podman (confined as tests/e2e/podman.py says)
has two flannelette networks on the node's one subnet and cni0: `flt-a` (flannelette +
portmap, the default) and `flt-b` (flannelette alone). Containers ping across nodes,
take a requested --ip and --mac-address, get `flt-b` connected and disconnected as a
second interface without losing eth0's routes, and `podman rm` leaves no veth, no
reservation, no plugin state and no libcni cache entry; a published port (-p, the chained
portmap) answers on the node's address from the other node.
"""
from __future__ import annotations

import ipaddress
import os
import sys

import pytest

from tests.e2e.cluster import ClusterSpec
from tests.e2e.conftest import started_cluster
from tests.e2e.podman import Podman, flannelette_conflist, podman_missing

pytestmark = [pytest.mark.timeout(420),
              pytest.mark.skipif(podman_missing() is not None, reason=str(podman_missing()))]


@pytest.fixture(scope="module")
def podman_cluster():
    with started_cluster(ClusterSpec(backend="vxlan", nodes=2)) as cluster:
        engines = []
        try:
            for node in cluster.nodes:
                networks = {"flt-a": flannelette_conflist(node, "flt-a"),
                            "flt-b": flannelette_conflist(node, "flt-b", portmap=False)}
                engines.append(Podman(node, cluster.bin_dir, networks).start())
            yield cluster, engines
        finally:
            for engine in engines:
                engine.close()


def _ifaces(engine: Podman, name: str) -> dict[str, dict]:
    """ifname -> inet and mac, from busybox `ip -o` (it has no JSON output)."""
    text = engine.exec(name, "ip", "-o", "addr", "show")
    ifaces: dict[str, dict] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) > 3 and words[2] == "inet":
            ifaces.setdefault(words[1], {})["inet"] = words[3]
    for line in engine.exec(name, "ip", "-o", "link", "show").splitlines():
        words = line.split()
        if "link/ether" in words:
            ifaces.setdefault(words[1].rstrip(":").split("@")[0], {})["mac"] = words[words.index("link/ether") + 1]
    return ifaces


def _routes(engine: Podman, name: str) -> set[str]:
    return {" ".join(line.split()) for line in engine.exec(name, "ip", "route", "show").splitlines()}


def _leftovers(engine: Podman) -> dict:
    node = engine.node
    veths = [name for name in (line.split(":")[1].strip().split("@")[0]
                               for line in node.ns.out("ip", "-o", "link", "show", "type", "veth").splitlines())
             if name.startswith("veth")]  # the node's own eth0 is its underlay veth
    store = os.path.join(node.ipam_data, "flt-a")
    reservations = sorted(n for n in os.listdir(store) if n[0].isdigit()) if os.path.isdir(store) else []
    states = []
    for root, _dirs, files in os.walk(node.plugin_data):
        states += [f for f in files if f.endswith(".json")]
    return {"veths": veths, "reservations": reservations, "states": states, "cache": engine.cache_entries()}


NOTHING_LEFT = {"veths": [], "reservations": [], "states": [], "cache": []}


def test_containers_ping_across_nodes(podman_cluster):
    cluster, (one, two) = podman_cluster
    one.run("ping-a")
    two.run("ping-b")
    ip_a = _ifaces(one, "ping-a")["eth0"]["inet"].split("/")[0]
    ip_b = _ifaces(two, "ping-b")["eth0"]["inet"].split("/")[0]
    assert ipaddress.ip_address(ip_a) in cluster.nodes[0].subnet
    assert ipaddress.ip_address(ip_b) in cluster.nodes[1].subnet
    one.exec("ping-a", "ping", "-c", "2", "-W", "3", ip_b)
    two.exec("ping-b", "ping", "-c", "2", "-W", "3", ip_a)
    for engine, name in ((one, "ping-a"), (two, "ping-b")):
        engine("rm", "--force", "--time", "0", name)
        assert _leftovers(engine) == NOTHING_LEFT


def test_requested_ip_and_mac(podman_cluster):
    cluster, (one, _two) = podman_cluster
    subnet = cluster.nodes[0].subnet
    ip, mac = str(subnet.network_address + 77), "02:42:0a:f4:00:4d"
    one.run("fixed", "--network", "flt-a", "--ip", ip, "--mac-address", mac)
    eth0 = _ifaces(one, "fixed")["eth0"]
    assert eth0 == {"inet": f"{ip}/{subnet.prefixlen}", "mac": mac}
    settings = one.inspect("fixed")["NetworkSettings"]["Networks"]["flt-a"]
    assert (settings["IPAddress"], settings["MacAddress"]) == (ip, mac)
    one("rm", "--force", "--time", "0", "fixed")
    assert _leftovers(one) == NOTHING_LEFT


def test_network_connect_and_disconnect_keep_eth0(podman_cluster):
    cluster, (one, two) = podman_cluster
    two.run("peer")
    peer_ip = _ifaces(two, "peer")["eth0"]["inet"].split("/")[0]
    one.run("multi", "--network", "flt-a")
    before = _routes(one, "multi")
    assert any(r.startswith("default via") and "dev eth0" in r for r in before), before

    one("network", "connect", "flt-b", "multi")
    ifaces = _ifaces(one, "multi")
    assert set(ifaces) >= {"eth0", "eth1"}, ifaces
    assert ifaces["eth0"]["inet"] != ifaces["eth1"]["inet"]  # one store for the shared subnet
    after = _routes(one, "multi")
    assert before <= after, f"connect took routes away: {before - after}"
    assert not any(r.startswith("default") and "eth1" in r for r in after), after
    one.exec("multi", "ping", "-c", "1", "-W", "3", peer_ip)

    one("network", "disconnect", "flt-b", "multi")
    assert "eth1" not in _ifaces(one, "multi")
    assert _routes(one, "multi") == before
    one.exec("multi", "ping", "-c", "1", "-W", "3", peer_ip)

    one("rm", "--force", "--time", "0", "multi")
    two("rm", "--force", "--time", "0", "peer")
    for engine in (one, two):
        assert _leftovers(engine) == NOTHING_LEFT


CONNECT = ("import socket, sys; s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5); "
           "s.settimeout(5); print(s.recv(100).decode().strip())")


def test_published_port_through_portmap(podman_cluster):
    cluster, (one, _two) = podman_cluster
    node1, node2 = cluster.nodes
    one.run("web", "--network", "flt-a", "--hostname", "flt-web", "-p", "8080:80",
            command=("nc", "-ll", "-p", "80", "-e", "/bin/hostname"))
    cid = one.inspect("web")["Id"]
    assert cid in node1.ns.out("iptables-save", "-t", "nat")  # portmap's DNAT for this container
    reply = node2.ns.run(sys.executable, "-c", CONNECT, node1.ip, "8080").stdout.decode().strip()
    assert reply == "flt-web"
    one("rm", "--force", "--time", "0", "web")
    assert cid not in node1.ns.out("iptables-save", "-t", "nat")
    assert _leftovers(one) == NOTHING_LEFT
