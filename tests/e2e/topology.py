"""The underlay of a test cluster: bridges in their own namespace, an optional router.

    underlay netns:  br0 192.168.50.254/24 (etcd listens here)    br1 (no address)
                      |        |         |                           |        |
                   node1    node2     rtr-a ---- router netns ---- rtr-b    node4
                 .50.11    .50.12   .50.1    (ip_forward=1)    .60.1       .60.11

Nodes on br0 are on-link with each other; a node on br1 reaches them only through
the router, which is what makes vxlan's DirectRouting fall back to encapsulation.
Everything lives in namespaces named `flt-...`; the root namespace is never touched.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tests.e2e.resources import Resources
from tests.support.netns import NetNS, link_netns

SUBNET_A = ipaddress.ip_network("192.168.50.0/24")
SUBNET_B = ipaddress.ip_network("192.168.60.0/24")
ETCD_IP = "192.168.50.254"
ROUTER_A = "192.168.50.1"
ROUTER_B = "192.168.60.1"
FIRST_NODE_HOST = 11


@dataclass
class Attachment:
    """Where a node plugs into the underlay: its address, gateway and bridge port name."""

    ip: str
    prefixlen: int
    port: str  # the veth end in the underlay netns (capture here to see the node's traffic)
    routes: list[tuple[str, str]]  # (destination, via) to add inside the node

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_interface(f"{self.ip}/{self.prefixlen}").network

    def on_link_with(self, other: "Attachment") -> bool:
        return self.network == other.network


class Underlay:
    def __init__(self, stem: str, with_router: bool, resources: Resources):
        self.stem, self.resources = stem, resources
        self.ns = self._netns(f"{stem}-underlay")
        self.router: NetNS | None = None
        self._next_host = {SUBNET_A: FIRST_NODE_HOST, SUBNET_B: FIRST_NODE_HOST}
        self._build_bridges()
        if with_router:
            self._build_router()

    @property
    def namespaces(self) -> list[NetNS]:
        return [self.ns] + ([self.router] if self.router else [])

    def _netns(self, name: str) -> NetNS:
        self.resources.namespaces.append(name)  # recorded first: removed even if setup fails
        return NetNS(name)

    def _build_bridges(self) -> None:
        ns = self.ns
        # A bridge must not route between the two subnets: only the router may.
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
        for br in ("br0", "br1"):
            ns.run("ip", "link", "add", br, "type", "bridge", "stp_state", "0")
            ns.run("ip", "link", "set", br, "up")
        ns.run("ip", "addr", "add", f"{ETCD_IP}/{SUBNET_A.prefixlen}", "dev", "br0")

    def _build_router(self) -> None:
        self.router = self._netns(f"{self.stem}-router")
        r = self.router
        for bridge, port, inner, addr, net in (("br0", "rtr-a", "eth-a", ROUTER_A, SUBNET_A),
                                               ("br1", "rtr-b", "eth-b", ROUTER_B, SUBNET_B)):
            link_netns(r, self.ns, inner, port)
            self.ns.run("ip", "link", "set", port, "master", bridge)
            r.run("ip", "addr", "add", f"{addr}/{net.prefixlen}", "dev", inner)
        r.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # etcd (on br0) must answer nodes behind the router.
        self.ns.run("ip", "route", "add", str(SUBNET_B), "via", ROUTER_A)

    def attach(self, node_ns: NetNS, port: str, routed: bool = False) -> Attachment:
        """Plug `node_ns` in as `eth0`; `routed` puts it on the second subnet behind the router."""
        if routed and self.router is None:
            raise ValueError("a routed node needs a cluster built with a router")
        subnet = SUBNET_B if routed else SUBNET_A
        host = self._next_host[subnet]
        self._next_host[subnet] += 1
        ip = str(subnet.network_address + host)
        link_netns(node_ns, self.ns, "eth0", port)
        self.ns.run("ip", "link", "set", port, "master", "br1" if routed else "br0")
        node_ns.run("ip", "addr", "add", f"{ip}/{subnet.prefixlen}", "dev", "eth0")
        routes: list[tuple[str, str]] = []
        if routed:
            routes.append(("default", ROUTER_B))
        elif self.router is not None:
            routes.append((str(SUBNET_B), ROUTER_A))
        for dst, via in routes:
            node_ns.run("ip", "route", "add", dst, "via", via)
        return Attachment(ip, subnet.prefixlen, port, routes)

    def detach(self, port: str) -> None:
        self.ns.run("ip", "link", "del", port, check=False)
