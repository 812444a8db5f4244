"""The underlay of a test cluster: the shared one (tests/support/underlay.py) with the
cluster's address plan and namespace names recorded in its `Resources`.

    underlay netns:  br0 192.168.50.254/24 (etcd listens here)    br1 (with the router)
                      |        |         |                           |        |
                   node1    node2     rtr-a ---- router netns ---- rtr-b    node4
                 .50.11    .50.12   .50.1    (ip_forward=1)    .60.1       .60.14
"""
from __future__ import annotations

from tests.e2e.resources import Resources
from tests.support.netns import NetNS
from tests.support.underlay import Attachment, Underlay as SharedUnderlay

__all__ = ["Attachment", "ETCD_IP", "Underlay"]

ETCD_IP = "192.168.50.254"


class Underlay(SharedUnderlay):
    def __init__(self, stem: str, with_router: bool, resources: Resources):
        def named(role: str) -> NetNS:
            name = f"{stem}-{role}"
            resources.namespaces.append(name)  # recorded first: removed even if setup fails
            return NetNS(name)

        super().__init__(network="192.168.50.0/24", routed_network="192.168.60.0/24",
                         switch_host=254, first_host=11, with_router=with_router,
                         new_netns=named)
        assert self.switch_ip == ETCD_IP
