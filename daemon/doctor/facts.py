"""What the path doctor knows about one pod-to-address path, as plain data.

The IO shell (collect.py) fills these from the kernel, etcd, iptables and /proc; the
evaluation core (hops.py) reads nothing else, so unit tests build them by hand.
A field left None means "could not be read"; an empty list means "read, none there".
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from cni_plugin.netlink import Route


@dataclass
class Iface:
    """A link as the doctor needs it: the pod's eth0, the host veth, cni0, flannel.1, the uplink."""
    name: str
    index: int = 0
    up: bool = False
    mtu: int = 0
    mac: str = ""
    master: str = ""  # the bridge a port is enslaved to, "" when none
    hairpin: Optional[bool] = None  # bridge ports only
    addresses: list[ipaddress.IPv4Interface] = field(default_factory=list)


@dataclass
class LeaseFacts:
    """A lease in etcd as the doctor reads it (None in PathFacts.lease when there is none)."""
    subnet: ipaddress.IPv4Network
    public_ip: str
    backend: str
    vtep_mac: str = ""
    ttl: Optional[int] = None  # seconds left; None: no TTL (a reservation) or unknown; <= 0: expired


@dataclass
class Probes:
    """Outcomes of the read-only probes (ICMP echo); None where not run."""
    public_ip: Optional[bool] = None  # the peer's public IP answers from this node
    tunnel: Optional[bool] = None  # the peer's flannel.1 address answers through VXLAN (small packet)
    tunnel_df: Optional[bool] = None  # same, DF set, at the pod MTU


@dataclass
class PathFacts:
    pod: str  # how the user named it (for messages)
    pod_netns: str  # the netns path, for fix commands
    dest: ipaddress.IPv4Address
    # expectations: subnet.env, the plugin config, the network config in etcd
    network: ipaddress.IPv4Network
    subnet_gateway: ipaddress.IPv4Interface  # FLANNEL_SUBNET: cni0's address, e.g. 10.244.1.1/24
    mtu: int  # FLANNEL_MTU (or the plugin's `mtu`)
    bridge_name: str = "cni0"
    hairpin_expected: bool = True
    backend: str = "vxlan"  # ours: vxlan, host-gw, alloc
    direct_routing: bool = False
    vxlan_port: int = 8472
    dest_subnet: Optional[ipaddress.IPv4Network] = None
    # the pod side
    pod_iface: Optional[Iface] = None
    pod_routes: list[Route] = field(default_factory=list)  # cni_plugin.netlink's, `dev` named
    # the node side
    veth: Optional[Iface] = None
    bridge: Optional[Iface] = None
    node_routes: list[Route] = field(default_factory=list)  # main table, IPv4
    vtep: Optional[Iface] = None  # flannel.1
    uplink: Optional[Iface] = None
    uplink_networks: list[ipaddress.IPv4Network] = field(default_factory=list)
    neighbours: dict[str, str] = field(default_factory=dict)  # flannel.1: IP -> MAC (permanent)
    fdb: dict[str, str] = field(default_factory=dict)  # flannel.1: MAC -> dst IP
    lease: Optional[LeaseFacts] = None
    etcd_error: str = ""  # why leases could not be read ("" when they were)
    probes: Probes = field(default_factory=Probes)
    iptables: dict[str, str] = field(default_factory=dict)  # backend ("legacy"/"nft"/"") -> save text
    rp_filter: dict[str, int] = field(default_factory=dict)  # "all", "cni0", "flannel.1", uplink name
    reverse_dev: dict[str, str] = field(default_factory=dict)  # source IP -> dev `ip route get` picks
    tx_checksum: Optional[bool] = None  # flannel.1's tx checksum offload
    kernel: str = ""  # uname release
    notes: list[str] = field(default_factory=list)

    @property
    def local(self) -> bool:
        """The destination is on this node's subnet: no tunnel, no peer."""
        return self.dest in self.subnet_gateway.network

    @property
    def encapsulated(self) -> bool:
        """vxlan without a direct route to this peer."""
        return self.backend == "vxlan" and not self.direct_route_expected

    @property
    def direct_route_expected(self) -> bool:
        if self.backend == "host-gw":
            return True
        if self.backend != "vxlan" or not self.direct_routing or self.lease is None:
            return False
        public = ipaddress.ip_address(self.lease.public_ip)
        return any(public in net for net in self.uplink_networks)

    @property
    def vtep_address(self) -> Optional[str]:
        """The peer's flannel.1 address (`<subnet>.0`): the gateway of its vxlan route."""
        return str(self.dest_subnet.network_address) if self.dest_subnet else None
