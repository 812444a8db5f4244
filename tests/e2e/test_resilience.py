"""The data plane outlives its control plane: a SIGKILLed daemon and a restarted etcd.

A continuous ping (every 50 ms) between pods on different nodes runs through each event;
not one packet may be lost, and the kernel state each daemon programmed must be the same
afterwards (the daemon neither flushes on start nor on losing etcd).
"""
from __future__ import annotations

import signal
import time

import pytest

from tests.e2e.cluster import Cluster
from tests.e2e.conftest import spec_for
from tests.e2e.node import ping_counts

pytestmark = pytest.mark.timeout(180)

INTERVAL = 0.05


def _pods_across(cluster: Cluster):
    return cluster.add_pod(cluster.nodes[0]), cluster.add_pod(cluster.nodes[1])


def _planes(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {n.name: n.data_plane() for n in cluster.nodes}


def test_sigkilled_daemons_restart_without_losing_a_packet(make_cluster, data_plane):
    cluster: Cluster = make_cluster(spec_for(data_plane, nodes=2, routed=0))
    a, b = _pods_across(cluster)
    assert a.ping(b.ip, wait=2)
    leases, planes = cluster.leases(), _planes(cluster)
    stream = a.ping_stream(b.ip, count=120, interval=INTERVAL)  # about 6 s
    time.sleep(0.5)
    for node in cluster.nodes:  # both ends, one after the other
        assert node.stop_daemon(signal.SIGKILL) == -signal.SIGKILL
        since = time.time()
        node.start_daemon()
        node.wait_ready(since=since)
    sent, received = ping_counts(stream)
    assert sent == 120 and received == sent, (f"{cluster.spec.label}: lost {sent - received} of "
                                              f"{sent} pings across daemon restarts")
    assert cluster.leases() == leases  # same subnets, same VTEP MACs
    cluster.wait_converged()
    assert _planes(cluster) == planes
    c = cluster.add_pod(cluster.nodes[1])  # the restarted daemons still wire pods
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
