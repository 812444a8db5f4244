"""The path doctor's IO shell: read the facts of one path, change nothing.

Kernel objects come through our own rtnetlink code (cni_plugin/netlink), bridge-port flags and
sysctls from /sys and /proc/sys of this (the node's) namespace, leases from etcd
(daemon/etcd/registry.py: reads only), iptables from `iptables-*-save` without `-t` (with `-t`
the legacy tool would create a missing table). The probes are ICMP echoes to the peer,
which change no state. Runs in the node's network namespace.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
from typing import Optional

from cni_plugin import netlink as nl
from cni_plugin.netlink import Fdb, NetlinkError, NetlinkSocket, Route
from cni_plugin.podns import netlink_in
from conf.flannel import Lease, load_lease
from daemon.doctor.facts import Iface, LeaseFacts, PathFacts, Probes
from daemon.etcd.registry import Registry, RegistryError

SIOCETHTOOL, ETHTOOL_GTXCSUM = 0x8946, 0x16
PROBE_WAIT = "1"  # seconds a probe waits for its answer


def read_pod(f: PathFacts, pod_fd: int, ifname: str) -> Optional[int]:
    """Fill the pod side; returns the host veth's ifindex (IFLA_LINK of the pod end)."""
    sock = netlink_in(pod_fd)
    try:
        link = nl.get_link(sock, ifname)
        if link is None:
            return None
        addrs = [a.interface for a in nl.addresses(sock, nl.AF_INET, link.index)]
        f.pod_iface = Iface(ifname, link.index, link.up, link.mtu, link.mac, addresses=addrs)
        f.pod_routes = [Route(r.dst, r.gateway, ifname, r.onlink) for r in nl.routes(sock, nl.AF_INET)
                        if r.oif == link.index and r.table == nl.RT_TABLE_MAIN]
        return link.peer_index or None
    finally:
        sock.close()


def _iface(sock: NetlinkSocket, name: str = "", index: int = 0) -> Optional[Iface]:
    link = nl.get_link(sock, name=name, index=index)
    if link is None:
        return None
    master = ""
    if link.master:
        up = nl.get_link(sock, index=link.master)
        master = up.name if up else str(link.master)
    addrs = [a.interface for a in nl.addresses(sock, socket.AF_INET, link.index)]
    return Iface(link.name, link.index, link.up, link.mtu, link.mac, master,
                 _hairpin(link.name) if master else None, addrs)


def _hairpin(name: str) -> Optional[bool]:
    text = _read_text(f"/sys/class/net/{name}/brport/hairpin_mode")
    return None if text is None else text.strip() == "1"


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def read_node(f: PathFacts, veth_index: Optional[int]) -> None:
    """cni0, the veth, flannel.1 and its uplink, routes, neighbours and FDB of this node."""
    sock = NetlinkSocket()
    try:
        _read_node(sock, f, veth_index)
    finally:
        sock.close()


def _read_node(sock: NetlinkSocket, f: PathFacts, veth_index: Optional[int]) -> None:
    if veth_index:
        f.veth = _iface(sock, index=veth_index)
    f.bridge = _iface(sock, f.bridge_name)
    names = {link.index: link.name for link in nl.all_links(sock)}
    f.node_routes = [Route(r.dst, r.gateway, names.get(r.oif, ""), r.onlink)
                     for r in nl.routes(sock, socket.AF_INET) if r.table == nl.RT_TABLE_MAIN]
    vtep_link = nl.get_link(sock, "flannel.1")
    if vtep_link is not None:
        f.vtep = _iface(sock, "flannel.1")
        if vtep_link.vxlan and vtep_link.vxlan.port:
            f.vxlan_port = vtep_link.vxlan.port
        uplink = vtep_link.vxlan.link if vtep_link.vxlan else None
        if uplink:
            f.uplink = _iface(sock, index=uplink)
        for n in nl.neighbours(sock, socket.AF_INET):
            if n.ifindex == vtep_link.index and n.state & nl.NUD_PERMANENT:
                f.neighbours[n.ip] = n.mac
        for n in nl.neighbours(sock, socket.AF_BRIDGE):
            if isinstance(n, Fdb) and n.ifindex == vtep_link.index and n.dst:
                f.fdb[n.mac] = n.dst
    if f.uplink is None:
        f.uplink = _default_uplink(sock, f)
    if f.uplink is not None:
        f.uplink_networks = [a.network for a in f.uplink.addresses]
    pod_ip = next((str(a.ip) for a in (f.pod_iface.addresses if f.pod_iface else [])), "")
    for source in filter(None, (pod_ip, str(f.dest))):
        try:
            route, _src = nl.route_to(sock, source)
            f.reverse_dev[source] = names.get(route.oif, "")
        except NetlinkError:
            f.reverse_dev[source] = ""


def _default_uplink(sock: NetlinkSocket, f: PathFacts) -> Optional[Iface]:
    """host-gw, or no flannel.1: the interface the peer's public IP is reached through."""
    if f.lease is None:
        return None
    try:
        route, _src = nl.route_to(sock, f.lease.public_ip)
    except NetlinkError:
        return None
    return _iface(sock, index=route.oif)


def read_lease(f: PathFacts, registry: Registry) -> None:
    """The lease whose subnet holds the destination (sets dest_subnet when one does)."""
    try:
        _rev, kvs = registry.list_leases()
        for kv in kvs:
            lease = load_lease(kv.key, kv.value)
            if f.dest in lease.subnet:
                f.dest_subnet = lease.subnet
                f.lease = lease_facts(lease, kv.lease_id, registry)
    except (RegistryError, ValueError) as e:
        f.etcd_error = str(e) or type(e).__name__


def lease_facts(lease: Lease, lease_id: int, registry: Registry) -> LeaseFacts:
    """A lease as the doctor sees it, with the seconds its etcd lease has left."""
    ttl = registry.time_to_live(lease_id) if lease_id else None
    vx = lease.attrs.vxlan if lease.attrs.backend_type == "vxlan" else None
    return LeaseFacts(lease.subnet, str(lease.attrs.public_ip), lease.attrs.backend_type,
                     vx.vtep_mac if vx else "", ttl)


def _ping(address: str, size: int = 56, dont_fragment: bool = False) -> bool:
    cmd = ["ping", "-n", "-q", "-c", "1", "-W", PROBE_WAIT, "-s", str(size)]
    if dont_fragment:
        cmd += ["-M", "do"]
    try:
        return subprocess.run([*cmd, address], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def probe(f: PathFacts) -> None:
    """ICMP echoes to the peer's public IP and, for vxlan, through the tunnel (read-only)."""
    if f.local or f.lease is None:
        return
    f.probes = Probes(public_ip=_ping(f.lease.public_ip))
    if f.encapsulated and f.vtep_address:
        f.probes.tunnel = _ping(f.vtep_address)
        if f.probes.tunnel:
            f.probes.tunnel_df = _ping(f.vtep_address, f.mtu - 28, dont_fragment=True)


def read_iptables(f: PathFacts) -> None:
    """IPv4 rules of every iptables backend present (a DROP in either one drops)."""
    f.iptables = iptables_saves()


def iptables_saves() -> dict[str, str]:
    saves: dict[str, str] = {}
    backends = [b for b in ("legacy", "nft") if shutil.which(f"iptables-{b}-save")] or [""]
    for backend in backends:
        tool = f"iptables-{backend}-save" if backend else "iptables-save"
        try:
            out = subprocess.run([tool], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:  # "" when the backend has no tables: nothing filtered there
            saves[backend] = out.stdout
    return saves


def read_sysctls(f: PathFacts) -> None:
    devs = ["all", f.bridge_name, "flannel.1"] + ([f.uplink.name] if f.uplink else [])
    for dev in devs:
        text = _read_text(f"/proc/sys/net/ipv4/conf/{dev}/rp_filter")
        if text is not None and text.strip().isdigit():
            f.rp_filter[dev] = int(text)
    f.kernel = os.uname().release
    if f.vtep is not None:
        f.tx_checksum = tx_checksum(f.vtep.name)


def tx_checksum(name: str) -> Optional[bool]:
    """ETHTOOL_GTXCSUM of a link in this namespace (ethtool -k's tx-checksumming)."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GTXCSUM, 0))
    ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    return bool(struct.unpack("II", value.raw[:8])[1])
