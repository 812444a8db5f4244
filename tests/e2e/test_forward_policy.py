"""Pod traffic crosses nodes whose FORWARD policy is DROP (as Docker leaves hosts).

flannel's `--ip-masq` rules include FORWARD -> FLANNEL-FWD ACCEPTs for the cluster
network; they only help in the iptables backend the node really uses. Each node gets,
before its daemon starts, FORWARD policy DROP and kubelet's KUBE-IPTABLES-HINT chain in
one backend (legacy or nft), so `--iptables-mode auto` must find that backend.

The control forces the daemon to the other backend: its ACCEPTs sit in nft while
legacy's DROP still drops (netfilter runs both backends' hooks; a DROP in either wins),
so cross-node pods must not reach each other until legacy's policy is reset.
"""
from __future__ import annotations

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.conftest import spec_for
from tests.e2e.node import Node, Pod, ping_counts
from tests.e2e.topology import ETCD_IP
from tests.support.netns import NetNS

pytestmark = pytest.mark.timeout(120)

HINT_CHAIN = "KUBE-IPTABLES-HINT"
OUR_JUMP = '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD'
TCP_PORT = 8080
PINGS = 10  # per measurement, 50 ms apart


def iptables(ns: NetNS, backend: str, *args: str, check: bool = True):
    return ns.run(f"iptables-{backend}", "-w", *args, check=check)


def saved_filter(ns: NetNS, backend: str) -> str:
    return ns.out(f"iptables-{backend}-save", "-t", "filter")


def lock_down(ns: NetNS, backend: str) -> None:
    """What a Docker + kubelet host looks like in `backend`: FORWARD DROP, the hint chain."""
    iptables(ns, backend, "-P", "FORWARD", "DROP")
    if iptables(ns, backend, "-t", "mangle", "-L", HINT_CHAIN, check=False).returncode:
        iptables(ns, backend, "-t", "mangle", "-N", HINT_CHAIN)


@pytest.fixture
def locked_down_nodes(monkeypatch):
    """`locked_down_nodes(backend)`: nodes started afterwards are locked down before their
    daemon runs (the harness starts each daemon right after plugging its node in)."""
    def arm(backend: str) -> None:
        start_daemon = Node.start_daemon

        def locked_start(node: Node) -> None:
            lock_down(node.ns, backend)
            start_daemon(node)
        monkeypatch.setattr(Node, "start_daemon", locked_start)
    return arm


@pytest.fixture(scope="module")
def legacy_works():
    """iptables-legacy needs x_tables in the kernel; probe it in a throwaway netns."""
    ns = NetNS()
    try:
        probe = iptables(ns, "legacy", "-L", "-n", check=False)
    finally:
        ns.close()
    if probe.returncode:
        pytest.skip(f"iptables-legacy does not work in a netns: {probe.stderr.decode().strip()}")


def received(src: Pod, ip: str) -> int:
    """Replies to PINGS pings from `src` to `ip`."""
    _, got = ping_counts(src.ping_stream(ip, count=PINGS))
    return got


def assert_rules_in(cluster: Cluster, ours: str, theirs: str, locked: str) -> None:
    """Our FORWARD jump sits in `ours` only, and every node still has FORWARD DROP
    in the backend it was `locked` down in (the daemon must not touch the policy)."""
    for node in cluster.nodes:
        assert ":FORWARD DROP" in saved_filter(node.ns, locked), f"{node.name}: policy changed"
        assert OUR_JUMP in saved_filter(node.ns, ours), f"{node.name}: no jump in {ours}"
        assert "FLANNEL-FWD" not in saved_filter(node.ns, theirs), f"{node.name}: in {theirs}"


def assert_pods_talk(cluster: Cluster, a: Pod, b: Pod) -> None:
    label = cluster.spec.label
    for src, dst in ((a, b), (b, a)):
        assert src.ping(dst.ip, wait=2), f"{label}: {src.label} -/-> {dst.label}\n" \
                                         f"{cluster.diagnostics()}"
        assert received(src, dst.ip) == PINGS, f"{label}: loss {src.label} -> {dst.label}"
    server = b.serve_tcp(TCP_PORT)
    try:
        assert a.tcp_request(b.ip, TCP_PORT) == f"{b.ip} greets {a.ip}"
    finally:
        server.kill()
        server.wait()


def masqueraded(node: Node, backend: str) -> int:
    """Packets our leave-the-cluster MASQUERADE rule (`-s C ! -d 224.0.0.0/4`) counted."""
    listing = iptables(node.ns, backend, "-t", "nat", "-L", "FLANNEL-POSTRTG", "-v", "-n", "-x")
    counts = [int(line.split()[0]) for line in listing.stdout.decode().splitlines()
              if "MASQUERADE" in line and "224.0.0.0/4" in line]
    assert len(counts) == 1, listing.stdout.decode()
    return counts[0]


def assert_masqueraded_to_underlay(cluster: Cluster, pod: Pod, backend: str) -> None:
    """The underlay has no route back to pods: a reply proves the source was rewritten
    to the node's address, and the MASQUERADE rule counted it."""
    assert cluster.underlay is not None
    back = cluster.underlay.ns.run("ip", "route", "get", pod.ip, check=False)
    assert back.returncode != 0, f"the underlay can route to {pod.ip}: {back.stdout!r}"
    before = masqueraded(pod.node, backend)
    assert pod.ping(ETCD_IP, wait=2), f"{pod.label} cannot reach the underlay at {ETCD_IP}"
    assert masqueraded(pod.node, backend) > before


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_pods_cross_forward_drop_nodes_with_ip_masq(make_cluster, data_plane, backend,
                                                    locked_down_nodes, request):
    if backend == "legacy":
        request.getfixturevalue("legacy_works")
    locked_down_nodes(backend)
    cluster: Cluster = make_cluster(spec_for(data_plane, nodes=2, routed=0,
                                             daemon_args=("--ip-masq",)))
    other = "nft" if backend == "legacy" else "legacy"
    assert_rules_in(cluster, ours=backend, theirs=other, locked=backend)
    a, b = cluster.add_pod(cluster.nodes[0]), cluster.add_pod(cluster.nodes[1])
    assert_pods_talk(cluster, a, b)
    assert_masqueraded_to_underlay(cluster, a, backend)


def test_rules_in_the_wrong_backend_do_not_open_legacy_forward_drop(make_cluster, legacy_works,
                                                                    locked_down_nodes):
    locked_down_nodes("legacy")
    cluster: Cluster = make_cluster(spec_for(("vxlan", False), nodes=2, routed=0,
                                             daemon_args=("--ip-masq", "--iptables-mode", "nft")))
    assert_rules_in(cluster, ours="nft", theirs="legacy", locked="legacy")
    a, b = cluster.add_pod(cluster.nodes[0]), cluster.add_pod(cluster.nodes[1])
    lost = {f"{s.label}->{d.label}": PINGS - received(s, d.ip) for s, d in ((a, b), (b, a))}
    print(f"\n[control] FORWARD DROP in legacy, ACCEPTs in nft: lost of {PINGS}: {lost}")
    assert all(n == PINGS for n in lost.values()), f"legacy DROP did not drop: {lost}"
    # The same pods talk once legacy's policy is the only thing changed.
    for node in cluster.nodes:
        iptables(node.ns, "legacy", "-P", "FORWARD", "ACCEPT")
    assert_pods_talk(cluster, a, b)
