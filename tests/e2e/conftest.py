"""Fixtures for the e2e tier: clusters that are always removed, even when a test fails."""
from __future__ import annotations

import pytest

from tests.e2e.cluster import Cluster, ClusterSpec
from tests.support.netns import leftover_namespaces

# (backend, DirectRouting): the three data planes every scenario runs on.
DATA_PLANES = [("vxlan", False), ("vxlan", True), ("host-gw", False)]
DATA_PLANE_IDS = ["vxlan", "vxlan-directrouting", "host-gw"]


@pytest.fixture
def make_cluster():
    """`make_cluster(spec)` starts a cluster; every one made is closed at teardown."""
    made: list[Cluster] = []

    def make(spec: ClusterSpec) -> Cluster:
        cluster = Cluster(spec)
        made.append(cluster)
        return cluster.start()

    yield make
    leftovers = [item for c in made for item in c.close()]
    assert not leftovers, f"cluster teardown left: {leftovers}"


@pytest.fixture(params=DATA_PLANES, ids=DATA_PLANE_IDS)
def data_plane(request) -> tuple[str, bool]:
    return request.param


@pytest.fixture(scope="session", autouse=True)
def no_leftover_namespaces():
    """After the whole e2e run, no `flt-` namespace may remain."""
    before = set(leftover_namespaces())
    yield
    left = set(leftover_namespaces()) - before
    assert not left, f"e2e left namespaces behind: {sorted(left)}"
