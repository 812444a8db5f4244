"""A node whose subnet another node took (flannel #1289, #1343), while down and running.

node1's daemon is down while its lease expires and a third node takes the subnet. On
start node1 must take a new subnet, move subnet.env and cni0's gateway to it, and its new
pods must reach pods on other nodes at once (no error 102 from the plugin). Its old pod is
not routed any more (the operator deletes or restarts it, as the daemon's warning says)
and its DEL still works. Then the same happens while node1's daemon runs.
"""
from __future__ import annotations

import ipaddress
import json
import time

import pytest

from tests.e2e.cluster import Cluster, ClusterSpec

pytestmark = pytest.mark.timeout(240)

TAKER_IP = "192.168.50.99"  # the node that took node1's subnet (only its lease exists)


def test_a_node_whose_subnet_was_taken_while_down_comes_back_on_a_new_one(make_cluster):
    cluster: Cluster = make_cluster(ClusterSpec(backend="vxlan", nodes=2, daemon_args=(
        "--ip-masq", "--iptables-mode", "nft")))
    node, other = cluster.nodes
    old_pod, remote = cluster.add_pod(node), cluster.add_pod(other)
    assert old_pod.ping(remote.ip, wait=2)
    old = node.subnet
    node.stop_daemon()
    cluster.delete_lease(old)  # expired while the node was away ...
    _take(cluster, old)  # ... and taken
    since, started = time.time(), time.monotonic()
    node.start_daemon()
    node.wait_ready(since=since)
    new = node.subnet
    assert new != old
    moved = [line for line in node.log_tail(200).splitlines() if "subnet moved from" in line]
    assert len(moved) == 1 and str(old) in moved[0] and str(new) in moved[0], moved
    cluster.wait_converged()
    recovered = time.monotonic() - started
    fresh = cluster.add_pod(node)  # the plugin finds cni0 on the new gateway: no error 102
    assert ipaddress.ip_address(fresh.ip) in new
    assert fresh.ping(remote.ip, wait=2) and remote.ping(fresh.ip, wait=2)
    assert not old_pod.ping(remote.ip, wait=1)  # not routed: the operator restarts it
    node.cni("DEL", old_pod.container_id, old_pod.ns.path)
    print(f"\nsubnet taken while down: {old} -> {new}, new pods reachable "
          f"{recovered:.1f}s after the daemon started")

    since, started = time.time(), time.monotonic()
    _take(cluster, new)  # now while the daemon runs
    node.wait_ready(since=since)
    third = node.subnet
    why = f"\n{cluster.diagnostics()}"
    assert third not in (old, new) and node.proc is not None and node.proc.poll() is None, why
    cluster.wait_converged()
    recovered = time.monotonic() - started
    latest = cluster.add_pod(node)
    assert ipaddress.ip_address(latest.ip) in third, why
    assert latest.ping(remote.ip, wait=2) and remote.ping(latest.ip, wait=2), \
        f"\n{cluster.diagnostics()}"
    masq = node.ns.out("iptables-nft-save", "-t", "nat")
    assert f"-s {third} -d {cluster.spec.network}" in masq and str(new) not in masq, masq
    print(f"subnet taken while running: {new} -> {third}, new pods reachable "
          f"{recovered:.1f}s after the takeover")


def _take(cluster: Cluster, subnet: ipaddress.IPv4Network) -> None:
    """Another node (only its lease exists) holds `subnet` now, on its own etcd lease."""
    assert cluster.etcd is not None
    lease = json.loads(cluster.etcd.ctl("lease", "grant", "600", "-w", "json").stdout)["ID"]
    cluster.etcd.ctl("put", "--lease", format(lease, "x"),
                     f"{cluster.spec.prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}",
                     json.dumps({"PublicIP": TAKER_IP, "BackendType": "vxlan", "BackendData":
                                 {"VNI": 1, "VtepMAC": "02:00:00:00:00:99"}}))
