"""Pods on different nodes reach each other, and the underlay shows how.

One cluster per data plane (vxlan, vxlan with DirectRouting, host-gw): two on-link nodes
plus, for vxlan, one node behind the router. Two pods per node, wired by the installed
`flannelette`. Every pod pings every other pod, TCP connects across nodes, and a
capture on the sender's underlay port shows the encapsulation the data plane promises.
"""
from __future__ import annotations

import itertools

import pytest

from tests.e2e.capture import PROTO_ICMP, Capture
from tests.e2e.cluster import Cluster, Pod
from tests.e2e.conftest import DATA_PLANE_IDS, DATA_PLANES, spec_for, started_cluster

pytestmark = pytest.mark.timeout(240)

TCP_PORT = 8080


@pytest.fixture(scope="module", params=DATA_PLANES, ids=DATA_PLANE_IDS)
def cluster(request):
    with started_cluster(spec_for(request.param)) as c:
        for node in c.nodes:
            c.add_pod(node)
            c.add_pod(node)
        yield c


def _unreachable(pods: list[Pod]) -> list[str]:
    return [f"{a.label} ({a.ip}) -> {b.label} ({b.ip})"
            for a, b in itertools.permutations(pods, 2) if not a.ping(b.ip, wait=2)]


def test_pods_get_addresses_from_their_nodes_subnet(cluster: Cluster):
    import ipaddress
    for node in cluster.nodes:
        for pod in node.pods:
            assert ipaddress.ip_address(pod.ip) in node.subnet, pod.label
    assert len({p.ip for p in cluster.pods}) == len(cluster.pods)


def test_every_pod_pings_every_other_pod(cluster: Cluster):
    failed = _unreachable(cluster.pods)
    assert not failed, f"{cluster.spec.label}: no reply for {failed}\n{cluster.diagnostics()}"


def test_tcp_connects_across_nodes_without_address_translation(cluster: Cluster):
    server = cluster.nodes[0].pods[0]
    server.serve_tcp(TCP_PORT)
    for client in (p for n in cluster.nodes[1:] for p in n.pods):
        reply = client.tcp_request(server.ip, TCP_PORT)
        # The server sees the client's own pod address: pod-to-pod traffic is not NATed.
        assert reply == f"{server.ip} greets {client.ip}", client.label


def _expected_path(cluster: Cluster, src_node, dst_node) -> str:
    spec = cluster.spec
    on_link = src_node.attachment.on_link_with(dst_node.attachment)
    if spec.backend == "host-gw" or (spec.direct_routing and on_link):
        return "direct"
    return "vxlan"


def test_underlay_capture_shows_the_promised_encapsulation(cluster: Cluster):
    src_node = cluster.nodes[0]
    src = src_node.pods[0]
    assert cluster.underlay is not None
    for dst_node in cluster.nodes[1:]:
        dst = dst_node.pods[0]
        with Capture(cluster.underlay.ns, src_node.attachment.port) as cap:
            assert src.ping(dst.ip, count=3, wait=2)
        packets = cap.packets()
        wrapped = [p for p in packets if p.is_vxlan and p.inner_src == src.ip
                   and p.inner_dst == dst.ip and p.inner_proto == PROTO_ICMP]
        plain = [p for p in packets if p.src == src.ip and p.dst == dst.ip and p.proto == PROTO_ICMP]
        expected = _expected_path(cluster, src_node, dst_node)
        where = f"{cluster.spec.label} {src_node.name}->{dst_node.name}"
        if expected == "vxlan":
            assert len(wrapped) >= 3 and not plain, f"{where}: expected VXLAN only, saw {packets}"
            for p in wrapped:  # outer header: node to node, UDP 8472
                assert (p.src, p.dst, p.udp_dport) == (src_node.ip, dst_node.ip, 8472), where
        else:
            assert len(plain) >= 3 and not wrapped, f"{where}: expected plain, saw {packets}"


def test_routes_name_the_next_hop_the_backend_promises(cluster: Cluster):
    node = cluster.nodes[0]
    for peer in cluster.nodes[1:]:
        (route,) = node.route_to(peer.subnet)
        if _expected_path(cluster, node, peer) == "direct":
            assert (route["gateway"], route["dev"]) == (peer.ip, "eth0"), route
        else:
            assert route["dev"] == "flannel.1" and "onlink" in route.get("flags", []), route
            assert route["gateway"] == str(peer.subnet.network_address), route
