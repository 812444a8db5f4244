"""The pure core of the data plane: leases -> wanted kernel objects -> changes.

No IO here. `plan()` turns the set of remote leases into the neighbour, FDB and
route entries this node should hold; `diff()` compares that with what the kernel
holds (read by daemon.dataplane.kernel) and returns the changes in the order they must be
applied: per peer neighbour, FDB, then route; removals in reverse.
Devices are named, not indexed, so a recreated flannel.1 changes nothing here. The
objects are cni_plugin.netlink's Neigh, Fdb and Route: the types a kernel read parses into.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from cni_plugin.netlink import Fdb, Neigh, Route
from conf.flannel import Lease

VXLAN, HOST_GW = "vxlan", "host-gw"
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class Topology:
    """What the planner needs to know about this node."""
    backend: str  # VXLAN or HOST_GW
    uplink: str  # the interface carrying node-to-node traffic
    vtep4: str = ""  # "flannel.1" (vxlan with IPv4)
    vtep6: str = ""  # "flannel-v6.1" (vxlan with IPv6)
    ipv4: bool = True
    ipv6: bool = False
    direct_routing: bool = False


@dataclass
class Plan:
    neighs: dict[tuple[str, str], Neigh] = field(default_factory=dict)
    fdbs: dict[tuple[str, str], Fdb] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    by_lease: dict[str, list] = field(default_factory=dict)  # lease key -> its objects
    refused: dict[str, str] = field(default_factory=dict)  # lease key -> why
    # (id of the plan this one was copied from, the lease keys changed since): diff_since's
    # shortcut; an id, not the plan, so plans do not hold on to each other
    since: tuple[int, list[str]] | None = field(default=None, compare=False, repr=False)

    def add(self, key: str, *objects) -> None:
        for obj in objects:
            if isinstance(obj, Neigh):
                self.neighs[(obj.dev, obj.ip)] = obj
            elif isinstance(obj, Fdb):
                self.fdbs[(obj.dev, obj.mac)] = obj
            else:
                self.routes[obj.dst] = obj
        self.by_lease.setdefault(key, []).extend(objects)

    @property
    def size(self) -> int:
        return len(self.neighs) + len(self.fdbs) + len(self.routes)

    def as_kernel_state(self) -> "KernelState":
        """The kernel as it is once this plan is applied in full."""
        return KernelState(self.neighs, list(self.fdbs.values()), self.routes)


def ip_text(addr) -> str:
    """str(ip_address) at a tenth of the cost, and spelled as the kernel dumps read back."""
    packed = addr.packed
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def net_text(net) -> str:
    return f"{ip_text(net.network_address)}/{net.prefixlen}"


def lease_key(lease: Lease) -> str:
    """The flannel subnet key (`10.244.1.0-24[&fc00::-64]`), computed cheaply."""
    key = f"{ip_text(lease.subnet.network_address)}-{lease.subnet.prefixlen}"
    if lease.ipv6_subnet is not None:
        key += f"&{ip_text(lease.ipv6_subnet.network_address)}-{lease.ipv6_subnet.prefixlen}"
    return key


class Memo:
    """Each lease's key and planned objects from the last plan, reused while the lease
    object is the same (the watcher replaces a lease that changed) and the topology and
    the on-link peers are too: spelling addresses out and building objects was most of a
    plan's cost, and a plan is made for every lease change. A plan's by_lease shares the
    tuples kept here. With the last plan kept too, a change of a few leases copies that plan
    and plans those alone (_plan_changes)."""

    def __init__(self):
        self.inputs: tuple | None = None  # (topology, connected, own subnet) of the entries
        self.entries: dict[int, tuple[Lease, str, tuple]] = {}  # id(lease) -> (lease, key, objects)
        self.last: Plan | None = None  # the plan these entries make up


def _plan_changes(own_subnet, leases: Iterable[Lease], topo: Topology, connected,
                  memo: Memo) -> tuple[Plan, dict] | None:
    """The memo's last plan with only the leases that came, went or were replaced planned:
    a copy of its dicts and the changed leases' objects, not a pass that re-adds every
    object. A refused lease is never memoized: it is planned again each time. None when the
    answer could depend on the order of the leases (an object key two leases share, which
    the first planned wins): the caller then plans them all."""
    last, old = memo.last, memo.entries
    if last is None:
        return None
    # an entry holds its lease, so no other live object has its id: equal ids, same lease
    current = dict(zip(map(id, leases), leases))
    gone = old.keys() - current.keys()
    came = [lease for lease in map(current.__getitem__, current.keys() - old.keys())
            if lease.subnet != own_subnet]
    if len(gone) + len(came) > len(old) // 4 + 8:
        return None  # most of the plan changes anyway
    out = Plan(dict(last.neighs), dict(last.fdbs), dict(last.routes), dict(last.by_lease))
    entries, touched = dict(old), []
    out.since = (id(last), touched)
    dropped = [entries.pop(i)[1:] for i in gone]
    dropped += [(key, last.by_lease.get(key, ())) for key in last.refused]  # planned again
    for key, objects in dropped:
        touched.append(key)
        for o in objects:
            table, k = _slot(out, o)
            if table.get(k) is o:
                del table[k]
        out.by_lease.pop(key, None)
    plan_one = _plan_vxlan if topo.backend == VXLAN else _plan_host_gw
    for lease in came:
        key = lease_key(lease)
        if key in out.by_lease:
            return None
        touched.append(key)
        single = Plan()
        plan_one(single, key, lease, topo, connected)
        objects = tuple(single.by_lease.get(key, ()))
        for o in objects:
            table, k = _slot(out, o)
            if k in table:
                return None
            table[k] = o
        if objects:
            out.by_lease[key] = objects
        if key in single.refused:  # (not for a taken VtepMAC: that is a shared key above)
            out.refused[key] = single.refused[key]
        else:
            entries[id(lease)] = (lease, key, objects)
    return out, entries


def _slot(p: Plan, obj) -> tuple[dict, tuple | str]:
    if type(obj) is Neigh:
        return p.neighs, (obj.dev, obj.ip)
    if type(obj) is Fdb:
        return p.fdbs, (obj.dev, obj.mac)
    return p.routes, obj.dst


def plan(own: Lease | None, leases: Iterable[Lease], topo: Topology,
         connected: frozenset[str] | set[str] = frozenset(), memo: Memo | None = None) -> Plan:
    """The wanted objects for every remote lease.

    `connected` holds the peer public IPs whose route lookup has no gateway
    (same L2 segment): DirectRouting and host-gw use them. With a `memo`, a lease planned
    whole by the previous call is not planned again (the result is the same).
    """
    own_subnet = own.subnet if own is not None else None
    inputs = (topo, frozenset(connected), own_subnet)
    old = memo.entries if memo is not None and memo.inputs == inputs else {}
    if old:
        leases = leases if isinstance(leases, (list, tuple)) else list(leases)
        changed = _plan_changes(own_subnet, leases, topo, connected, memo)
        if changed is not None:
            memo.last, memo.entries = changed
            return changed[0]
    out = Plan()
    fresh: dict[int, tuple[Lease, str, tuple]] = {}
    plan_one = _plan_vxlan if topo.backend == VXLAN else _plan_host_gw
    neighs, fdbs, routes, by_lease = out.neighs, out.fdbs, out.routes, out.by_lease
    for lease in leases:
        entry = old.get(id(lease))
        if entry is not None and entry[0] is lease:  # (not our own: own_subnet is an input)
            objects = entry[2]
            for o in objects:
                if type(o) is Fdb and (o.dev, o.mac) in fdbs:
                    break  # its VtepMAC went to a lease planned before it: plan it afresh
            else:
                for o in objects:
                    if type(o) is Neigh:
                        neighs[(o.dev, o.ip)] = o
                    elif type(o) is Fdb:
                        fdbs[(o.dev, o.mac)] = o
                    else:
                        routes[o.dst] = o
                if objects:
                    by_lease[entry[1]] = objects
                fresh[id(lease)] = entry
                continue
        if lease.subnet == own_subnet:
            continue
        key = lease_key(lease)
        plan_one(out, key, lease, topo, connected)
        if key not in out.refused:  # planned whole: kept for the next call
            objects = ()
            if key in by_lease:
                objects = by_lease[key] = tuple(by_lease[key])
            fresh[id(lease)] = (lease, key, objects)
    if memo is not None:
        memo.inputs, memo.entries, memo.last = inputs, fresh, out
    return out


def _vtep_mac(data: dict | None) -> str:
    given = str((data or {}).get("VtepMAC", ""))
    mac = given.lower()
    if mac == given:
        mac = given  # the lease's own string: lower() copies it, 66 bytes a lease for the plan's life
    return mac if _MAC_RE.match(mac) else ""


class _Side(NamedTuple):
    """One address family of a remote lease, as the planner needs it."""
    subnet: str
    vtep_ip: str  # the subnet's network address: the peer VTEP's own address
    public_ip: str
    vxlan_data: dict | None
    vtep: str  # our VXLAN device for this family


def _sides(lease: Lease, topo: Topology) -> list[_Side]:
    attrs, out = lease.attrs, []
    if topo.ipv4 and lease.subnet is not None:
        out.append(_Side(net_text(lease.subnet), ip_text(lease.subnet.network_address),
                         ip_text(attrs.public_ip), attrs.backend_data, topo.vtep4))
    if topo.ipv6 and lease.ipv6_subnet is not None and attrs.public_ipv6 is not None:
        out.append(_Side(net_text(lease.ipv6_subnet), ip_text(lease.ipv6_subnet.network_address),
                         ip_text(attrs.public_ipv6), attrs.backend_v6_data, topo.vtep6))
    return out


def _plan_vxlan(out: Plan, key: str, lease: Lease, topo: Topology, connected) -> None:
    if lease.attrs.backend_type != VXLAN:
        out.refused[key] = f"lease {key} has BackendType {lease.attrs.backend_type!r}, not vxlan"
        return
    for side in _sides(lease, topo):
        if topo.direct_routing and side.public_ip in connected:
            out.add(key, Route(side.subnet, side.public_ip, topo.uplink, False))
            continue
        mac, dev = _vtep_mac(side.vxlan_data), side.vtep
        if not mac:
            out.refused[key] = f"lease {key} has no valid VtepMAC for {side.subnet}"
            continue
        taken = out.fdbs.get((dev, mac))
        if taken is not None:
            out.refused[key] = f"lease {key} uses VtepMAC {mac}, already used by peer {taken.dst}"
            continue
        out.add(key, Neigh(dev, side.vtep_ip, mac), Fdb(dev, mac, side.public_ip),
                Route(side.subnet, side.vtep_ip, dev, True))


def _plan_host_gw(out: Plan, key: str, lease: Lease, topo: Topology, connected) -> None:
    if lease.attrs.backend_type != HOST_GW:
        out.refused[key] = f"lease {key} has BackendType {lease.attrs.backend_type!r}, not host-gw"
        return
    for side in _sides(lease, topo):
        if side.public_ip not in connected:
            out.refused[key] = (f"host-gw peer {side.public_ip} (subnet {side.subnet}) is not "
                                f"on-link on {topo.uplink}; host-gw needs direct layer-2 "
                                "connectivity")
            continue
        out.add(key, Route(side.subnet, side.public_ip, topo.uplink, False))


# ---------------------------------------------------------------- diff


@dataclass
class KernelState:
    """Our objects as the kernel holds them now (see daemon.dataplane.kernel.read_state)."""
    neighs: dict[tuple[str, str], Neigh] = field(default_factory=dict)
    fdbs: list[Fdb] = field(default_factory=list)  # a MAC may carry several remotes
    routes: dict[str, Route] = field(default_factory=dict)  # owned routes and wanted dsts


@dataclass
class Changes:
    """Requests in apply order: first the set phases (neigh, fdb, route), then removals."""
    set_neighs: list[Neigh] = field(default_factory=list)
    del_stale_fdbs: list[Fdb] = field(default_factory=list)  # old remotes of a wanted MAC
    set_fdbs: list[Fdb] = field(default_factory=list)
    set_routes: list[Route] = field(default_factory=list)
    del_routes: list[Route] = field(default_factory=list)
    del_fdbs: list[Fdb] = field(default_factory=list)
    del_neighs: list[Neigh] = field(default_factory=list)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.set_neighs or self.del_stale_fdbs or self.set_fdbs or self.set_routes
                    or self.del_routes or self.del_fdbs or self.del_neighs)


def diff(wanted: Plan, current: KernelState, owned_devs: frozenset[str] | set[str]) -> Changes:
    """What to replace and what to remove so the kernel matches `wanted`.

    Only objects on `owned_devs` (our VTEPs, and the uplink for routes into the
    cluster network) are ever removed.
    """
    ch = Changes()
    for key, neigh in wanted.neighs.items():
        if current.neighs.get(key) == neigh:
            ch.unchanged += 1
        else:
            ch.set_neighs.append(neigh)
    remotes: dict[tuple[str, str], list[Fdb]] = {}
    for fdb in current.fdbs:
        remotes.setdefault((fdb.dev, fdb.mac), []).append(fdb)
    for key, fdb in wanted.fdbs.items():
        have = remotes.get(key, [])
        if have == [fdb]:
            ch.unchanged += 1
            continue
        ch.del_stale_fdbs.extend(have)  # a changed PublicIP: drop the old remote first
        ch.set_fdbs.append(fdb)
    for dst, route in wanted.routes.items():
        if current.routes.get(dst) == route:
            ch.unchanged += 1
        else:
            ch.set_routes.append(route)
    ch.del_routes = [r for dst, r in current.routes.items()
                     if dst not in wanted.routes and r.dev in owned_devs]
    ch.del_fdbs = [f for key, group in remotes.items() if key not in wanted.fdbs
                   and key[0] in owned_devs for f in group]
    ch.del_neighs = [n for key, n in current.neighs.items()
                     if key not in wanted.neighs and n.dev in owned_devs]
    return ch


def diff_since(wanted: Plan, last: Plan, owned_devs: frozenset[str] | set[str]) -> Changes:
    """diff(wanted, <the kernel holding `last` in full>), looking only at the leases whose
    objects are not the very ones of `last` (plan() with a Memo shares them): a lease change
    costs its own objects and one pass over the lease keys, not a comparison of every object."""
    old, new = last.by_lease, wanted.by_lease
    if wanted.since is not None and wanted.since[0] == id(last):  # (`last` is alive: its id is its own)
        touched = wanted.since[1]
    else:
        touched = [k for k, objs in old.items() if new.get(k) is not objs]
        touched += [k for k in new if k not in old]
    neigh_keys, fdb_keys, dsts = {}, {}, {}  # dicts as ordered sets
    for key in touched:
        for obj in (*old.get(key, ()), *new.get(key, ())):
            if type(obj) is Neigh:
                neigh_keys[(obj.dev, obj.ip)] = None
            elif type(obj) is Fdb:
                fdb_keys[(obj.dev, obj.mac)] = None
            else:
                dsts[obj.dst] = None
    sub_wanted, sub_last = Plan(), Plan()
    for whole, sub in ((wanted, sub_wanted), (last, sub_last)):
        sub.neighs = {k: whole.neighs[k] for k in neigh_keys if k in whole.neighs}
        sub.fdbs = {k: whole.fdbs[k] for k in fdb_keys if k in whole.fdbs}
        sub.routes = {k: whole.routes[k] for k in dsts if k in whole.routes}
    ch = diff(sub_wanted, sub_last.as_kernel_state(), owned_devs)
    ch.unchanged += wanted.size - sub_wanted.size  # every other wanted object is as it was
    return ch
