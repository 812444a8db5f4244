"""The data plane outlives its control plane: restarted daemons and a restarted etcd.

A continuous ping between pods on different nodes (every 20 ms across daemon restarts,
50 ms across the etcd restart) runs through each event; not one packet may be lost, and
the kernel state each daemon programmed must be the same afterwards (the daemon neither
flushes on stop, nor re-creates on start, nor flushes on losing etcd).
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.conftest import spec_for
from tests.e2e.netlink_monitor import NetlinkMonitor, touches_data_plane
from tests.e2e.node import ping_counts

pytestmark = pytest.mark.timeout(180)

INTERVAL = 0.05


def _pods_across(cluster: Cluster):
    return cluster.add_pod(cluster.nodes[0]), cluster.add_pod(cluster.nodes[1])


def _planes(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {n.name: n.data_plane() for n in cluster.nodes}


RESTART_INTERVAL = 0.02  # the ping across daemon restarts
DOWN_SECONDS = 2.0  # how long "stop+start" leaves the daemon down
# (label, signal, seconds down): the ways an operator or a crash restarts flanneletted
RESTARTS = (("SIGTERM", signal.SIGTERM, 0.0), ("SIGKILL", signal.SIGKILL, 0.0),
            ("stop+start", signal.SIGTERM, DOWN_SECONDS))
NUD_FAILED = 0x20
RECOVERY_BOUND = 15.0  # seconds for a restarted daemon to drop a vanished peer


def _fwd_counters(node) -> dict[str, int]:
    """Packet counter of each flannel iptables rule (nft, as --iptables-mode nft puts them)."""
    counters = {}
    for table in ("filter", "nat"):
        for line in node.ns.out("iptables-nft-save", "-c", "-t", table).splitlines():
            if line.startswith("[") and "FLANNEL-" in line:
                packets, rule = line[1:].split(":", 1)[0], line.split("] ", 1)[1]
                counters[rule] = int(packets)
    return counters


def _ifindex(node, name: str) -> int | None:
    out = node.ns.run("ip", "-j", "link", "show", "dev", name, check=False).stdout
    return json.loads(out)[0]["ifindex"] if out.strip() else None


def _reconciled_seconds(node, started: float, timeout: float = 30.0) -> float:
    """Seconds from `started` (monotonic) until /metrics shows the first reconcile run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = node.ns.run("curl", "-sf", "http://127.0.0.1:8471/metrics", check=False).stdout
        if b"flannelette_reconcile_runs_total{" in metrics:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{node.name}: no reconcile run {timeout}s after the start")


def _without(plane: dict[str, str], marks: tuple[str, ...]) -> dict[str, str]:
    """The data plane's lines without those naming a departed peer (its subnet, IP, MAC),
    sorted: the kernel lists neighbours in hash order, which a deletion may reshuffle."""
    return {k: sorted(line for line in v.splitlines() if not any(m in line for m in marks))
            for k, v in plane.items()}


def _removal_of(event: dict, marks: tuple[str, ...]) -> bool:
    """An event of removing a departed peer's object: a delete, or the kernel's NUD_FAILED
    notification that precedes a deleted neighbour's RTM_DELNEIGH."""
    removal = event["event"].startswith("RTM_DEL") or (
        event["event"] == "RTM_NEWNEIGH" and event["state"] == NUD_FAILED)
    return removal and any(m in json.dumps(event) for m in marks)


def _peer_gone(node, marks: tuple[str, ...]) -> bool:
    return all(m not in text for text in node.data_plane().values() for m in marks)


@pytest.mark.timeout(300)
def test_restarts_lose_no_packet_and_keep_valid_state(make_cluster, data_plane):
    """SIGTERM, SIGKILL, stop+start of node1's daemon under a 20 ms ping to node2's pod:
    no packet lost, nothing flushed while it is down, no still-valid object re-created at
    start (netlink monitor, flannel.1 ifindex, iptables packet counters), and the routes
    of a peer whose lease went away while the daemon was down removed at start."""
    cluster: Cluster = make_cluster(spec_for(data_plane, nodes=3, routed=0,
                                             daemon_args=("--ip-masq", "--iptables-mode", "nft")))
    node, other, leaving = cluster.nodes[:3]
    a, b = cluster.add_pod(node), cluster.add_pod(other)
    assert a.ping(b.ip, wait=2)
    leases = cluster.leases()
    vtep = _ifindex(node, "flannel.1")
    devices = {vtep: "flannel.1"} if vtep else {}
    bridge = _ifindex(node, "cni0")
    gone: tuple[str, ...] = ()
    figures = []
    for label, sig, down in RESTARTS:
        count = int((1.0 + down + 8.0) / RESTART_INTERVAL)
        stream = a.ping_stream(b.ip, count=count, interval=RESTART_INTERVAL)
        time.sleep(0.5)
        plane, counters = node.data_plane(), _fwd_counters(node)
        assert counters and min(counters.values()) >= 0
        monitor = NetlinkMonitor(node.ns)
        node.stop_daemon(sig)
        assert _without(node.data_plane(), ()) == _without(plane, ()), \
            f"{label}: shutdown changed the data plane"
        assert _fwd_counters(node).keys() == counters.keys(), f"{label}: shutdown removed rules"
        if down:  # a peer leaves while this daemon is down (flannel #2554)
            lease = leases[f"{leaving.subnet.network_address}-{leaving.subnet.prefixlen}"]
            gone = (str(leaving.subnet.network_address), leaving.ip,
                    *(lease.get("BackendData") or {}).get("VtepMAC", "").split())
            cluster.remove_node(leaving)
            time.sleep(down)
            assert _without(node.data_plane(), ()) == _without(plane, ()), \
                f"{label}: the data plane changed while down"
        since, started = time.time(), time.monotonic()
        node.start_daemon()
        node.wait_ready(since=since)
        ready = time.monotonic() - started
        reconciled = _reconciled_seconds(node, started)
        cleaned = 0.0
        if gone:
            while not _peer_gone(node, gone):
                assert time.monotonic() - started < RECOVERY_BOUND, \
                    f"{label}: the departed peer's entries stayed:\n{node.describe()}"
                time.sleep(0.02)
            cleaned = time.monotonic() - started
        assert stream.poll() is None, f"{label}: the ping ended before the restart did"
        sent, received = ping_counts(stream)
        events = [e for e in monitor.stop()
                  if touches_data_plane(e, cluster.spec.network, devices, bridge)]
        stale = [e for e in events if not _removal_of(e, gone)]
        figures.append(f"{label}: sent={sent} lost={sent - received} ready={ready:.2f}s "
                       f"reconciled={reconciled:.2f}s" + (f" peer_removed={cleaned:.2f}s"
                                                          if gone else ""))
        assert received == sent, f"{cluster.spec.label} {label}: lost {sent - received} of {sent}"
        assert not stale, f"{label}: valid objects touched at start: {stale}"
        assert _ifindex(node, "flannel.1") == vtep
        assert _without(node.data_plane(), gone) == _without(plane, gone)
        after = _fwd_counters(node)
        assert after.keys() == counters.keys()
        assert all(after[r] >= counters[r] for r in counters), \
            f"{label}: iptables counters went back (chains flushed): {counters} -> {after}"
    print(f"\n{cluster.spec.label} restarts ({len(RESTARTS)} trials, ping every "
          f"{RESTART_INTERVAL * 1000:.0f} ms): " + "; ".join(figures))
    del leases[f"{gone[0]}-24"]
    assert cluster.leases() == leases  # same subnets, same VTEP MACs
    cluster.wait_converged()
    c = cluster.add_pod(other)  # the restarted daemon's node still reaches new pods
    assert a.ping(c.ip, wait=2)


def test_etcd_restart_changes_nothing_on_the_data_plane(make_cluster, data_plane):
    cluster: Cluster = make_cluster(spec_for(data_plane, nodes=2, routed=0))
    assert cluster.etcd is not None
    a, b = _pods_across(cluster)
    assert a.ping(b.ip, wait=2)
    leases, planes = cluster.leases(), _planes(cluster)
    stream = a.ping_stream(b.ip, count=100, interval=INTERVAL)  # about 5 s
    time.sleep(0.5)
    cluster.etcd.stop()
    time.sleep(2.0)  # the daemons notice the lost watch and start reconnecting
    assert _planes(cluster) == planes
    assert all(n.proc is not None and n.proc.poll() is None for n in cluster.nodes), \
        "a daemon exited while etcd was down"
    cluster.etcd.start()
    sent, received = ping_counts(stream)
    assert received == sent, f"{cluster.spec.label}: lost {sent - received} of {sent} pings"
    assert cluster.leases() == leases
    assert _planes(cluster) == planes
    c = cluster.add_pod(cluster.nodes[1])
    assert a.ping(c.ip, wait=2)
