"""The host-local allocator, pure: range sets in, reservations through a `Store`.

A range set is a list of ranges handing out one address per attachment (one set
per address family gives dual stack). Inside a set, allocation is round-robin:
it starts after the set's last reserved address, runs to the end of that range,
on through the following ranges, wraps to the first, and ends with the last
reserved address itself. The gateway is skipped; network and IPv4 broadcast
addresses lie outside every range by construction.

Unlike host-local, an ADD for an attachment (container id + ifname) that already
holds an address in a set returns that address: kubelet repeats an ADD whose
reply it lost to a timeout, and must get the same answer.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from conf.errors import AddressExhaustedError, AddressUnavailableError, InvalidConfigError
from conf.flannel import SubnetEnv
from conf.plugin import IpamRange
from ipam.store import IPAddr, Store

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Range:
    subnet: IPNet
    start: IPAddr
    end: IPAddr
    gateway: IPAddr

    def __contains__(self, ip: IPAddr) -> bool:
        return ip.version == self.start.version and self.start <= ip <= self.end

    def overlaps(self, other: "Range") -> bool:
        return (self.start.version == other.start.version
                and self.start <= other.end and other.start <= self.end)

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


RangeSet = Sequence[Range]


@dataclass(frozen=True)
class Allocation:
    range_id: int
    ip: IPAddr
    range: Range
    new: bool  # False when the attachment already held it

    @property
    def address(self) -> str:
        """ip/prefix of the subnet, the CNI result's `address`."""
        return f"{self.ip}/{self.range.subnet.prefixlen}"


def describe(range_set: RangeSet) -> str:
    return ",".join(map(str, range_set))


# ---------------------------------------------------------------- building ranges


def make_range(spec: IpamRange, where: str) -> Range:
    """host-local's canonical range: gateway and start default to network+1, end to
    the last address (IPv4: the one before broadcast). InvalidConfigError names `where`."""
    net = spec.subnet
    first = net.network_address + 1
    last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    start = spec.range_start if spec.range_start is not None else first
    end = spec.range_end if spec.range_end is not None else last
    for field, addr in (("rangeStart", start), ("rangeEnd", end)):
        if not first <= addr <= last:
            raise InvalidConfigError(
                f"invalid network configuration: field '{where}.{field}': {addr} is the network "
                f"or broadcast address of {net}; usable addresses are {first}-{last}")
    if start > end:
        raise InvalidConfigError(
            f"invalid network configuration: field '{where}.rangeStart': {start} is after rangeEnd {end}")
    gateway = spec.gateway if spec.gateway is not None else first
    return Range(subnet=net, start=start, end=end, gateway=gateway)


def make_range_sets(specs: Sequence[Sequence[IpamRange]], where: str = "ipam.ranges") -> list[list[Range]]:
    sets: list[list[Range]] = []
    seen: list[tuple[str, Range]] = []
    for i, spec_set in enumerate(specs):
        built = []
        for j, spec in enumerate(spec_set):
            name = f"{where}.{i}.{j}"
            r = make_range(spec, name)
            for other_name, other in seen:
                if r.overlaps(other):
                    raise InvalidConfigError(
                        f"invalid network configuration: field '{name}': range {r} overlaps "
                        f"{other_name} ({other})")
            seen.append((name, r))
            built.append(r)
        sets.append(built)
    return sets


def range_sets_from_subnet_env(env: SubnetEnv) -> list[list[Range]]:
    """One set per family: the node's subnet (FLANNEL_SUBNET's network), gateway .1."""
    specs = []
    for iface in (env.subnet, env.ipv6_subnet):
        if iface is not None:
            specs.append([IpamRange(subnet=iface.network)])
    return make_range_sets(specs, where="subnet.env")


# ---------------------------------------------------------------- allocation


def _candidates(range_set: RangeSet, last: Optional[IPAddr]) -> Iterator[tuple[Range, IPAddr]]:
    """Every address of the set once, round-robin after `last`, gateways skipped."""
    spans: list[tuple[Range, IPAddr, IPAddr]] = [(r, r.start, r.end) for r in range_set]
    here = next((i for i, r in enumerate(range_set) if last is not None and last in r), None)
    if here is not None:
        r = range_set[here]
        spans = ([(r, last + 1, r.end)] if last < r.end else []) \
            + spans[here + 1:] + spans[:here] + [(r, r.start, last)]
    for r, lo, hi in spans:
        ip = lo
        while ip <= hi:
            if ip != r.gateway:
                yield r, ip
            if ip == hi:
                break  # hi may be the family's very last address: do not step past it
            ip += 1


def _find(range_set: RangeSet, ip: IPAddr) -> Optional[Range]:
    return next((r for r in range_set if ip in r), None)


class Allocator:
    def __init__(self, store: Store, range_sets: Sequence[RangeSet]):
        self.store = store
        self.range_sets = range_sets

    def allocate(self, container_id: str, ifname: str,
                 requested: Iterable[IPAddr] = ()) -> list[Allocation]:
        """One address per range set for the attachment, all or nothing."""
        wanted = list(requested)
        done: list[Allocation] = []
        with self.store.locked():
            held = self.store.get_by_id(container_id, ifname)
            try:
                for range_id, range_set in enumerate(self.range_sets):
                    want = next((ip for ip in wanted if _find(range_set, ip)), None)
                    if want is not None:
                        wanted.remove(want)
                    done.append(self._allocate_in_set(range_id, range_set, container_id, ifname,
                                                      held, want))
                if wanted:
                    raise AddressUnavailableError(
                        "requested IP address(es) " + ", ".join(map(str, wanted))
                        + " are not inside any configured range: "
                        + "; ".join(describe(s) for s in self.range_sets))
            except BaseException:
                for a in done:
                    if a.new:
                        self.store.release(a.ip)
                raise
        return done

    def _allocate_in_set(self, range_id: int, range_set: RangeSet, container_id: str,
                         ifname: str, held: list[IPAddr], want: Optional[IPAddr]) -> Allocation:
        mine = [ip for ip in held if _find(range_set, ip)]
        if mine:
            if want is None or want in mine:
                ip = want if want is not None else mine[0]
                return Allocation(range_id, ip, _find(range_set, ip), new=False)
            raise AddressUnavailableError(
                f"container {container_id} interface {ifname} already holds {mine[0]} in range set "
                f"{describe(range_set)}; it cannot also take the requested {want}")
        if want is not None:
            r = _find(range_set, want)
            if want == r.gateway:
                raise AddressUnavailableError(f"requested IP address {want} is the gateway of range {r}")
            if not self.store.reserve(container_id, ifname, want, range_id):
                raise AddressUnavailableError(
                    f"requested IP address {want} is not available in range set {describe(range_set)}")
            return Allocation(range_id, want, r, new=True)
        for r, ip in _candidates(range_set, self.store.last_reserved_ip(range_id)):
            if self.store.reserve(container_id, ifname, ip, range_id):
                return Allocation(range_id, ip, r, new=True)
        raise AddressExhaustedError(f"no IP addresses available in range set: {describe(range_set)}")


# ---------------------------------------------------------------- release, lookup, GC


def release(store: Store, container_id: str, ifname: str) -> list[IPAddr]:
    with store.locked():
        return store.release_by_id(container_id, ifname)


def held_by(store: Store, container_id: str, ifname: str) -> list[IPAddr]:
    with store.locked():
        return store.get_by_id(container_id, ifname)


def collect_garbage(store: Store, valid: Iterable[tuple[str, str]]) -> list[IPAddr]:
    """Release every reservation whose attachment is not in `valid`. A legacy
    (id-only) file survives when its container still has any valid attachment."""
    valid = set(valid)
    valid_ids = {cid for cid, _ in valid}
    released = []
    with store.locked():
        for r in store.list_all():
            keep = (r.container_id, r.ifname) in valid or (
                r.ifname == "" and r.container_id in valid_ids)
            if not keep:
                store.release(r.ip)
                released.append(r.ip)
    return released
