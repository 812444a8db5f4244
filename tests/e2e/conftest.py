"""Fixtures for the e2e tier: clusters that are always removed, even when a test fails."""
from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from tests.e2e.cluster import Cluster, ClusterSpec

# (backend, DirectRouting): the three data planes every scenario runs on.
DATA_PLANES = [("vxlan", False), ("vxlan", True), ("host-gw", False)]
DATA_PLANE_IDS = ["vxlan", "vxlan-directrouting", "host-gw"]


def spec_for(data_plane: tuple[str, bool], nodes: int = 2, routed: int = 1,
             **kw) -> ClusterSpec:
    """A cluster spec for a data plane; host-gw gets no routed node (it cannot reach one)."""
    backend, direct = data_plane
    if backend == "host-gw":
        nodes, routed = nodes + routed, 0
    return ClusterSpec(backend=backend, direct_routing=direct, nodes=nodes, routed_nodes=routed,
                       **kw)


@contextlib.contextmanager
def started_cluster(spec: ClusterSpec) -> Iterator[Cluster]:
    """A started cluster, closed afterwards; fails the test if anything is left behind."""
    cluster = Cluster(spec)
    try:
        yield cluster.start()
    finally:
        leftovers = cluster.close()
        assert not leftovers, f"cluster teardown left: {leftovers}"


@pytest.fixture
def make_cluster():
    """`make_cluster(spec)` starts a cluster; every one made is closed at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda spec: stack.enter_context(started_cluster(spec))


@pytest.fixture(params=DATA_PLANES, ids=DATA_PLANE_IDS)
def data_plane(request) -> tuple[str, bool]:
    return request.param
