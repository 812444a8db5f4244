"""The test underlay every tier builds on: a switch namespace, its bridges, nodes plugged in.

    switch netns:  br0 <network> (optional switch address)           br1 <routed network>
                    |        |          |                              |        |
                  node     node      rtr-a ---- router netns ---- rtr-b      node
                                     <net>.1   (ip_forward=1)    <routed>.1

Nodes on br0 are on-link with each other; a node on br1 reaches them only through the
router netns (built on request), which is what makes vxlan's DirectRouting fall back to
encapsulation and host-gw refuse the peer. Each node gets `eth0` with the next host
number (shared by both segments) and, if asked, an IPv6 address whose last group is the
same number (node .10 is `<prefix>::10`). Only `flt-` namespaces are touched; the tiers
add their own parts (etcd and daemons, backend workers, pods) on top.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Optional

from tests.support.netns import NetNS, link_netns

ROUTER_HOST = 1  # the router's host number on both segments


@dataclass
class Attachment:
    """Where a node plugs into the underlay: its addresses, bridge port and routes."""

    ip: str
    prefixlen: int
    port: str  # the veth end in the switch netns (capture here to see the node's traffic)
    routes: list[tuple[str, str]]  # (destination, via) added inside the node
    ip6: Optional[str] = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_interface(f"{self.ip}/{self.prefixlen}").network

    def on_link_with(self, other: "Attachment") -> bool:
        return self.network == other.network


@dataclass
class Segment:
    bridge: str
    network: ipaddress.IPv4Network
    network6: Optional[ipaddress.IPv6Network]

    def address(self, host: int) -> str:
        return str(self.network.network_address + host)

    def address6(self, host: int) -> Optional[str]:
        return f"{self.network6.network_address}{host}" if self.network6 else None


class Underlay:
    """The switch netns (`.ns`) with br0, optionally a router netns and a routed br1.

    `switch_host` gives the switch an address on br0 (where etcd listens); with
    `default_via_switch` nodes on br0 route everything else through it. `new_netns(role)`
    makes the switch ("underlay") and router ("router") namespaces, so a caller can name
    and record them before they exist."""

    def __init__(self, network: str = "192.168.50.0/24", network6: Optional[str] = None,
                 routed_network: str = "192.168.60.0/24", routed_network6: Optional[str] = None,
                 switch_host: Optional[int] = None, first_host: int = 11,
                 default_via_switch: bool = False, with_router: bool = False,
                 new_netns: Optional[Callable[[str], NetNS]] = None):
        self._new_netns = new_netns or (lambda role: NetNS())
        self.main = Segment("br0", ipaddress.ip_network(network),
                            ipaddress.ip_network(network6) if network6 else None)
        self.routed = Segment("br1", ipaddress.ip_network(routed_network),
                              ipaddress.ip_network(routed_network6) if routed_network6 else None)
        self.switch_ip = self.main.address(switch_host) if switch_host else None
        self.default_via_switch = default_via_switch
        self._next_host = first_host
        self.router: Optional[NetNS] = None
        self.ns = self._new_netns("underlay")
        # A bridge must not route between the two segments: only the router may.
        self.ns.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
        self._add_bridge("br0")
        if self.switch_ip:
            self.ns.run("ip", "addr", "add", f"{self.switch_ip}/{self.main.network.prefixlen}",
                        "dev", "br0")
        if with_router:
            self.add_router()

    @property
    def namespaces(self) -> list[NetNS]:
        return [self.ns] + ([self.router] if self.router else [])

    def _add_bridge(self, name: str) -> None:
        # A fixed MAC: by default a bridge takes its lowest port's, so a node leaving would
        # change the MAC of the switch address (etcd) under every other node's ARP cache.
        mac = f"02:f1:7e:00:00:{int(name[2:]) + 1:02x}"
        self.ns.run("ip", "link", "add", name, "address", mac, "type", "bridge", "stp_state", "0")
        self.ns.run("ip", "link", "set", name, "up")

    def add_router(self) -> None:
        """The routed segment br1 and the router netns joining it to br0."""
        self._add_bridge("br1")
        self.router = r = self._new_netns("router")
        for seg, port, inner in ((self.main, "rtr-a", "eth-a"), (self.routed, "rtr-b", "eth-b")):
            link_netns(r, self.ns, inner, port)
            self.ns.run("ip", "link", "set", port, "master", seg.bridge)
            r.run("ip", "addr", "add", f"{seg.address(ROUTER_HOST)}/{seg.network.prefixlen}",
                  "dev", inner)
        r.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self.switch_ip:  # etcd (on br0) must answer nodes behind the router
            self.ns.run("ip", "route", "add", str(self.routed.network),
                        "via", self.main.address(ROUTER_HOST))

    def attach(self, node_ns: NetNS, port: Optional[str] = None, routed: bool = False,
               ipv6: bool = False, mtu: Optional[int] = None,
               forwarding: bool = False) -> Attachment:
        """Plug `node_ns` in as `eth0` (on br1 behind the router when `routed`); `forwarding`
        makes the node route (v4 and v6) as a host carrying pods does."""
        if routed and self.router is None:
            raise ValueError("a routed node needs an underlay built with a router")
        seg = self.routed if routed else self.main
        host, self._next_host = self._next_host, self._next_host + 1
        port = port or f"p{host}"
        link_netns(node_ns, self.ns, "eth0", port)
        self.ns.run("ip", "link", "set", port, "master", seg.bridge)
        if mtu:
            node_ns.run("ip", "link", "set", "eth0", "mtu", str(mtu))
        ip, ip6 = seg.address(host), seg.address6(host) if ipv6 else None
        node_ns.run("ip", "addr", "add", f"{ip}/{seg.network.prefixlen}", "dev", "eth0")
        if ip6:
            node_ns.run("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
            node_ns.run("ip", "addr", "add", f"{ip6}/{seg.network6.prefixlen}", "dev", "eth0",
                        "nodad")
        if forwarding:
            node_ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            node_ns.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        routes = self._routes(routed)
        for dst, via in routes:
            node_ns.run("ip", "route", "add", dst, "via", via)
        return Attachment(ip, seg.network.prefixlen, port, routes, ip6)

    def _routes(self, routed: bool) -> list[tuple[str, str]]:
        if routed:
            return [("default", self.routed.address(ROUTER_HOST))]
        if self.router is not None:
            return [(str(self.routed.network), self.main.address(ROUTER_HOST))]
        if self.default_via_switch and self.switch_ip:
            return [("default", self.switch_ip)]
        return []

    def detach(self, port: str) -> None:
        self.ns.run("ip", "link", "del", port, check=False)

    def close(self) -> None:
        """Delete the router and switch namespaces (nodes are their owners' to close)."""
        for ns in reversed(self.namespaces):
            ns.close()
