"""flannel's `alloc` backend: lease a subnet, program nothing.

With `"Backend": {"Type": "alloc"}` the daemon only holds the lease and writes
subnet.env; the routes are someone else's business (flannel ships it for clouds
whose own routing does the job). It is also how tests exercise leases alone.
"""
from __future__ import annotations

from conf.flannel import Lease, LeaseAttrs, NetworkConfig
from daemon.dataplane.backend import ReconcileStats
from daemon.dataplane.node import NodeInfo


class AllocBackend:
    kind = "alloc"

    def __init__(self, netconf: NetworkConfig, node: NodeInfo):
        self.netconf, self.node = netconf, node
        self.mtu = netconf.backend.mtu or node.iface_mtu

    def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(PublicIP=self.node.public_ip, PublicIPv6=self.node.public_ipv6,
                          BackendType=self.kind)

    def configure(self, own: Lease) -> None:
        pass

    def reconcile(self, own: Lease, leases: list[Lease]) -> ReconcileStats:
        return ReconcileStats()

    def watch_kernel(self, callback) -> None:
        return None

    def programmed(self, lease: Lease) -> bool:
        return False  # nothing is ever programmed for a peer

    def close(self) -> None:
        pass
