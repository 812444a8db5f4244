"""The IO side of the planner: read our objects from the kernel, apply changes.

Reads are full dumps parsed cheaply (cni_plugin.netlink); writes go out as one
ordered batch, so 15000 objects cost about what the kernel needs to insert them.
Everything happens in the network namespace of the calling thread.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass, field

from cni_plugin import netlink as nl
from cni_plugin.netlink import Fdb, Neigh, NetlinkSocket, Route
from daemon.dataplane.planner import Changes, KernelState

log = logging.getLogger(__name__)

_ZERO_MAC = "00:00:00:00:00:00"


@dataclass
class Devices:
    """Name <-> ifindex of the links the data plane uses, resolved once per reconcile."""
    by_name: dict[str, int]
    vteps: frozenset[str]  # our VXLAN devices: every neighbour/FDB/route on them is ours
    uplink: str
    networks: tuple = ()  # cluster networks (ip_network); uplink routes into them are ours
    by_index: dict[int, str] = field(init=False)

    def __post_init__(self) -> None:
        self.by_index = {i: n for n, i in self.by_name.items()}

    @property
    def owned(self) -> frozenset[str]:
        return self.vteps | {self.uplink}

    def name(self, ifindex: int) -> str:
        return self.by_index.get(ifindex, f"#{ifindex}")


@dataclass
class ApplyResult:
    applied: int = 0
    failed: list[tuple[object, nl.NetlinkError]] = field(default_factory=list)


def read_state(sock: NetlinkSocket, devs: Devices, ipv4: bool, ipv6: bool) -> KernelState:
    state = KernelState()
    vtep_idx = {devs.by_name[n] for n in devs.vteps if n in devs.by_name}
    families = [f for f, on in ((socket.AF_INET, ipv4), (socket.AF_INET6, ipv6)) if on]
    if vtep_idx:
        for family in families:
            dumped = nl.dump_neighbours(sock, family)
            for ifindex, ip, mac, st in nl.neigh_rows(dumped, vtep_idx):
                if st & nl.NUD_PERMANENT and ip and mac:
                    neigh = Neigh(devs.by_index[ifindex], ip, mac)
                    state.neighs[(neigh.dev, ip)] = neigh
        dumped = nl.dump_neighbours(sock, nl.AF_BRIDGE)
        for ifindex, ip, mac, _st in nl.neigh_rows(dumped, vtep_idx):
            if ip and mac and mac != _ZERO_MAC:
                state.fdbs.append(Fdb(devs.by_index[ifindex], mac, ip))
    uplink_idx = devs.by_name.get(devs.uplink)
    for family in families:
        for r in nl.routes(sock, family):
            if r.table != nl.RT_TABLE_MAIN or r.protocol == nl.RTPROT_KERNEL:
                continue
            if r.oif in vtep_idx or (r.oif == uplink_idx and r.gateway
                                     and _inside(r.dst, devs.networks)):
                state.routes[r.dst] = Route(r.dst, r.gateway, devs.name(r.oif), r.onlink)
    return state


def _inside(dst: str, networks) -> bool:
    net = ipaddress.ip_network(dst, strict=False)
    return any(net.version == n.version and net.subnet_of(n) for n in networks)


def apply(sock: NetlinkSocket, ch: Changes, devs: Devices) -> ApplyResult:
    """Send every change as one ordered batch; a removal of something already gone is fine."""
    # (object, is_removal) in apply order: neighbour, FDB, route; removals in reverse
    objects = [(n, False) for n in ch.set_neighs] + [(f, True) for f in ch.del_stale_fdbs]
    objects += [(f, False) for f in ch.set_fdbs] + [(r, False) for r in ch.set_routes]
    objects += [(r, True) for r in ch.del_routes]
    objects += [(f, True) for f in ch.del_fdbs if f.dev in devs.by_name]
    objects += [(n, True) for n in ch.del_neighs if n.dev in devs.by_name]
    requests = (_encode(obj, removal, devs.by_name) for obj, removal in objects)
    result = ApplyResult()
    if not objects:
        return result
    failures = sock.batch(requests)
    bad = set()
    for index, err in failures:
        obj, removal = objects[index]
        if removal and err.errno in (errno.ENOENT, errno.ESRCH):
            continue
        bad.add(index)
        result.failed.append((obj, err))
    result.applied = len(objects) - len(bad)
    return result


def _encode(obj, removal: bool, idx: dict[str, int]) -> bytes:
    if isinstance(obj, Route):
        return nl.route_delete(obj) if removal else nl.route_replace(obj, idx[obj.dev])
    if isinstance(obj, Fdb):
        encode = nl.fdb_delete if removal else nl.fdb_replace
        return encode(idx[obj.dev], obj.mac, obj.dst)
    encode = nl.neigh_delete if removal else nl.neigh_replace
    return encode(idx[obj.dev], obj.ip, obj.mac)


def directly_connected(sock: NetlinkSocket, ips: list[str], uplink_index: int) -> set[str]:
    """Peers reached on the uplink without a gateway (flannel's DirectRouting test)."""
    if not ips:
        return set()
    found = nl.lookup_routes(sock, ips)
    return {ip for ip, r in found.items()
            if r is not None and not r.gateway and r.oif == uplink_index}
