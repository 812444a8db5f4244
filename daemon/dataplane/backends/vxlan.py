"""vxlan backend: pod traffic between nodes in VXLAN over the uplink.

How it works. The node owns one VXLAN device per address family, `flannel.<VNI>`
(IPv4) and `flannel-v6.<VNI>` (IPv6): `nolearning`, local = the uplink's address,
dstport 8472 unless `Backend.Port` says otherwise, MTU = uplink MTU - 50 (- 70 with IPv6), and the
lease subnet's network address as a /32 (/128) - the source of host-to-pod
traffic. Its MAC is set at creation, kept in `<state_dir>/<device>.mac` and
otherwise derived from the public IP, so it survives restarts and reboots and
peers never hold a stale VtepMAC. Per remote lease the planner asks for:

    neigh  <peer .0> lladdr <VtepMAC> dev flannel.1 nud permanent
    fdb    <VtepMAC> dev flannel.1 dst <PublicIP> self permanent
    route  <peer subnet> via <peer .0> dev flannel.1 onlink

With `DirectRouting`, a peer whose PublicIP is on our L2 segment gets
`route <peer subnet> via <PublicIP> dev <uplink>` instead.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass
from typing import Optional

from cni_plugin import netlink as nl
from conf.flannel import VXLAN_OVERHEAD, Lease, LeaseAttrs, ensure_dir, write_atomic
from daemon.dataplane import kernel
from daemon.dataplane.backend import DataplaneError, KernelBackend
from daemon.dataplane.planner import VXLAN, Topology

log = logging.getLogger(__name__)

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class VtepSpec:
    name: str
    family: int
    vni: int
    local: str
    link: int
    port: int
    learning: bool
    gbp: bool
    mtu: int
    udp_csum: Optional[bool] = None  # None: the kernel's default, never compared


class VxlanBackend(KernelBackend):
    def __init__(self, netconf, node, state_dir):
        super().__init__(netconf, node, state_dir)
        cfg = netconf.backend
        # an IPv6 underlay header is 20 bytes longer: the kernel caps flannel-v6.<VNI> at
        # uplink - 70, and pods carrying both families must fit the smaller VTEP
        overhead = VXLAN_OVERHEAD + (20 if netconf.enable_ipv6 else 0)
        self.mtu = cfg.mtu or node.iface_mtu - overhead
        self.specs: list[VtepSpec] = []
        for on, family, name, local, what in (
                (netconf.enable_ipv4, socket.AF_INET, f"flannel.{cfg.vni}", node.iface_ip, "IPv4"),
                (netconf.enable_ipv6, socket.AF_INET6, f"flannel-v6.{cfg.vni}", node.iface_ipv6,
                 "IPv6")):
            if not on:
                continue
            if not local:
                raise DataplaneError(f"vxlan needs an {what} address on {node.iface}")
            # IPv6 requires UDP checksums (RFC 8200): UDPChecksum applies to IPv4 only
            udp_csum = cfg.udp_checksum if family == socket.AF_INET else None
            self.specs.append(VtepSpec(name, family, cfg.vni, local, node.iface_index,
                                       cfg.udp_port, cfg.learning, cfg.gbp, self.mtu, udp_csum))
        self.macs = {s.name: stable_mac(state_dir, s.name, node.public_ip) for s in self.specs}
        self._own: Optional[Lease] = None

    # -------------------------------------------------- lease attrs and devices
    def prepare(self) -> LeaseAttrs:
        self._ensure_devices(None)
        data = {s.family: {"VNI": s.vni, "VtepMAC": self.macs[s.name]} for s in self.specs}
        return LeaseAttrs(public_ip=self.node.public_ip, public_ipv6=self._advertised_ipv6(),
                          backend_type=VXLAN, backend_data=data.get(socket.AF_INET),
                          backend_v6_data=data.get(socket.AF_INET6))

    def _configure(self, own: Lease) -> None:
        self._own = own
        self._ensure_devices(own)

    def _topology(self) -> Topology:
        names = {s.family: s.name for s in self.specs}
        return Topology(VXLAN, self.node.iface, vtep4=names.get(socket.AF_INET, ""),
                        vtep6=names.get(socket.AF_INET6, ""),
                        ipv4=socket.AF_INET in names, ipv6=socket.AF_INET6 in names,
                        direct_routing=self.netconf.backend.direct_routing)

    def _ensure_devices(self, own):
        own = own or self._own
        by_name = {self.node.iface: self.node.iface_index}
        recreated = []
        sock = self._sock
        for spec in self.specs:
            index, why = ensure_vtep(sock, spec, self.macs[spec.name])
            if why:
                recreated.append(spec.name)
            by_name[spec.name] = index
            if own is not None:
                subnet = own.subnet if spec.family == socket.AF_INET else own.ipv6_subnet
                network = (self.netconf.network if spec.family == socket.AF_INET
                           else self.netconf.ipv6_network)
                if subnet is not None:
                    ensure_address(sock, index, spec.family, subnet.network_address, network)
            ensure_up(sock, index, self.macs[spec.name])
        devs = kernel.Devices(by_name, frozenset(s.name for s in self.specs), self.node.iface,
                              self.networks)
        return devs, recreated


def stable_mac(state_dir: str, dev: str, public_ip) -> str:
    """The VTEP MAC: the one stored for `dev` in `state_dir`, else derived from our public
    IP (and then stored)."""
    path = os.path.join(state_dir, f"{dev}.mac") if state_dir else ""
    if path and os.path.exists(path):
        stored = open(path, encoding="ascii").read().strip().lower()
        if _MAC_RE.match(stored):
            return stored
        log.warning("%s holds %r, not a MAC; deriving a new one", path, stored)
    raw = bytearray(hashlib.sha256(f"flannelette/{dev}/{public_ip}".encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    mac = raw.hex(":")
    if path:
        ensure_dir(state_dir)
        write_atomic(path, (mac + "\n").encode(), 0o644)
    return mac


# ---------------------------------------------------------------- device helpers (cni_plugin.netlink)


def vtep_mismatch(link: nl.Link, spec: VtepSpec) -> str:
    """Why an existing link cannot serve as `spec`; "" when it can (flannel's check)."""
    if link.kind != "vxlan" or link.vxlan is None:
        return f"it is a {link.kind or 'non-vxlan'} device"
    v = link.vxlan
    checks = [("VNI", v.vni, spec.vni),
              ("local address", _norm_ip(v.local), _norm_ip(spec.local)),
              ("underlay device index", v.link, spec.link),
              ("UDP port", v.port, spec.port),
              ("learning", v.learning, spec.learning),
              ("GBP", v.gbp, spec.gbp)]
    if spec.udp_csum is not None:  # the kernel cannot change it on a live device
        checks.append(("UDP checksum", v.udp_csum, spec.udp_csum))
    for what, have, want in checks:
        if have != want:
            return f"its {what} is {have}, want {want}"
    return ""


def _norm_ip(ip) -> str:
    return str(ipaddress.ip_address(ip)) if ip else ""


def ensure_vtep(sock, spec: VtepSpec, mac: str) -> tuple[int, str]:
    """(ifindex, why it was (re)created or "" when an existing device was kept)."""
    link = nl.get_link(sock, name=spec.name)
    why = "it did not exist"
    if link is not None:
        why = vtep_mismatch(link, spec)
        if not why:
            if link.mtu != spec.mtu:
                nl.set_link(sock, link.index, mtu=spec.mtu)
            return link.index, ""
        log.warning("%s exists but %s; recreating it", spec.name, why)
        nl.delete_link(sock, index=link.index)
    else:
        log.info("creating %s (VNI %d, local %s, dstport %d%s)", spec.name, spec.vni, spec.local,
                 spec.port, "" if spec.udp_csum is None else
                 f", UDP checksums {'on' if spec.udp_csum else 'off'}")
    nl.add_link(sock, nl.Link(0, spec.name, mtu=spec.mtu, mac=mac, kind="vxlan", vxlan=nl.Vxlan(
        spec.vni, spec.link, spec.local, spec.port, spec.learning, spec.gbp, spec.udp_csum)))
    _sysctl(f"/proc/sys/net/ipv6/conf/{spec.name}/accept_ra", "0")
    created = nl.get_link(sock, name=spec.name)
    if created is None:
        raise DataplaneError(f"{spec.name} vanished right after its creation")
    return created.index, why


def ensure_address(sock, index: int, family: int, addr, network) -> None:
    """Exactly `addr`/32 (/128) among our link's addresses inside `network`."""
    plen = 32 if family == socket.AF_INET else 128
    have = False
    for a in nl.addresses(sock, family, index):
        ip, p = a.address, a.prefixlen
        if ipaddress.ip_address(ip) == addr and p == plen:
            have = True
        elif network is not None and ipaddress.ip_address(ip) in network:
            log.info("removing stale address %s/%d from link %d", ip, p, index)
            nl.delete_address(sock, index, ip, p)
    if not have:
        nl.add_address(sock, index, str(addr), plen)


def ensure_up(sock, index: int, mac: str) -> None:
    link = nl.get_link(sock, index=index)
    if link is None:
        raise DataplaneError(f"link {index} vanished")
    if not link.up:
        nl.set_link(sock, index, up=True)
        link = nl.get_link(sock, index=index) or link
    if link.mac != mac:  # udev MACAddressPolicy may rewrite it (flannel #1795)
        log.warning("link %d has MAC %s, want %s; setting it back", index, link.mac, mac)
        nl.set_link(sock, index, mac=mac)


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass  # IPv6 disabled on this node: nothing to turn off
