"""host-gw backend: plain routes to peers on the same layer-2 segment.

How it works. No device is created. Per remote lease the planner asks for

    route  <peer subnet> via <peer PublicIP> dev <uplink>

(and the same for the IPv6 subnet via PublicIPv6). A peer whose PublicIP is not
directly connected on the uplink (the route lookup has a gateway, or leaves on
another interface) cannot be reached this way: it is refused with a log line and
counted in the `refused_peers` metric, instead of installing a route that silently
black-holes (flannel installs it anyway).
"""
from __future__ import annotations

from conf.flannel import Lease, LeaseAttrs
from daemon.dataplane import kernel
from daemon.dataplane.backend import DataplaneError, KernelBackend
from daemon.dataplane.planner import HOST_GW, Topology


class HostGwBackend(KernelBackend):
    def prepare(self) -> LeaseAttrs:
        node = self.node
        if node.iface_ip and node.public_ip != node.iface_ip:
            raise DataplaneError(
                f"host-gw: public IP {node.public_ip} is not the address of {node.iface} "
                f"({node.iface_ip}); peers route to it directly, so it must be (NAT is not supported)")
        return LeaseAttrs(public_ip=node.public_ip, public_ipv6=self._advertised_ipv6(),
                          backend_type=HOST_GW)

    def _topology(self) -> Topology:
        return Topology(HOST_GW, self.node.iface, ipv4=self.netconf.enable_ipv4,
                        ipv6=self.netconf.enable_ipv6)

    def _ensure_devices(self, own: Lease | None):
        devs = kernel.Devices({self.node.iface: self.node.iface_index}, frozenset(),
                              self.node.iface, self.networks)
        return devs, []
