"""flannel's `alloc` backend: lease a subnet, program nothing.

With `"Backend": {"Type": "alloc"}` the daemon only holds the lease and writes
subnet.env; the routes are someone else's business (flannel ships it for clouds
whose own routing does the job). It is also how tests exercise leases alone.
"""
from __future__ import annotations

from typing import Callable

from conf.flannel import Lease, LeaseAttrs, NetworkConfig
from daemon.dataplane.backend import ReconcileStats
from daemon.dataplane.node import NodeInfo


class AllocBackend:
    """A daemon.dataplane.backend.Backend with no kernel objects and no state on disk."""

    def __init__(self, netconf: NetworkConfig, node: NodeInfo, state_dir: str):
        self.node = node
        self.mtu = netconf.backend.mtu or node.iface_mtu

    def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(public_ip=self.node.public_ip, public_ipv6=self.node.public_ipv6,
                          backend_type="alloc")

    def configure(self, own: Lease) -> None:
        pass

    def reconcile(self, own: Lease, leases: list[Lease], read_kernel: bool = True) -> ReconcileStats:
        return ReconcileStats()

    def programmed(self, lease: Lease) -> bool:
        return False  # nothing is ever programmed for a peer

    def watch_kernel(self, callback: Callable[[], None]) -> None:
        return None

    def close(self) -> None:
        pass
