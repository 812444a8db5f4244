"""The node's uplink, found as flanneld's LookupExtIface does: NodeInfo, discover_node
(one selector) and select_node (the daemon's flags in flanneld's order)."""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from cni_plugin import netlink as nl
from cni_plugin.netlink import NetlinkSocket
from daemon.dataplane.backend import DataplaneError

if TYPE_CHECKING:
    from conf.daemon import DaemonSettings
    from conf.flannel import NetworkConfig


@dataclass(frozen=True)
class NodeInfo:
    iface: str
    iface_index: int
    public_ip: Optional[str]  # advertised in the lease (may differ from iface_ip behind NAT)
    public_ipv6: Optional[str] = None
    iface_mtu: int = 1500
    iface_ip: Optional[str] = None  # the uplink's own address: the VXLAN source
    iface_ipv6: Optional[str] = None



def discover_node(iface: str | None = None, public_ip: str | None = None,
                  public_ipv6: str | None = None, *, iface_regex: str | None = None,
                  can_reach: str | None = None,
                  families: tuple[int, ...] = (socket.AF_INET,)) -> NodeInfo:
    """Pick the uplink as flanneld's LookupExtIface does, with one selector per call:
    `iface` by name or address, else `iface_regex` (see match_iface_regex), else the
    route to `can_reach`, else the interface holding `public_ip`, else the one of the
    default route. `families` are the address families of the network (regex matching)."""
    sock = NetlinkSocket()
    try:
        addrs = [(a.index, a.family, a.address, a.prefixlen) for a in nl.addresses(sock)]
        index, chosen = None, {}  # chosen: family -> the address the selector picked
        if iface:
            found = nl.get_link(sock, name=iface)
            index = found.index if found else _holder(addrs, iface)
            if index is None:
                raise DataplaneError(f"--iface {iface}: no such interface or address in this node")
        elif iface_regex:
            index, chosen = _regex_choice(sock, iface_regex, addrs, families)
        elif can_reach:
            index, chosen = _route_choice(sock, can_reach)
        elif public_ip:
            index = _holder(addrs, public_ip)
        if index is None:
            index = _default_route_iface(sock)
        if index is None:
            raise DataplaneError("no default route: pass --iface to choose the node's interface")
        link = nl.get_link(sock, index=index)
        if link is None:
            raise DataplaneError(f"interface #{index} vanished while looking at it")
        name, mtu = link.name, link.mtu
    finally:
        sock.close()
    v4 = [a for i, f, a, _ in addrs if i == index and _usable(f, a, socket.AF_INET)]
    v6 = [a for i, f, a, _ in addrs if i == index and _usable(f, a, socket.AF_INET6)]
    if not v4 and not public_ip and socket.AF_INET not in chosen:
        raise DataplaneError(f"interface {name} has no IPv4 address: pass --public-ip")
    iface_ip = chosen.get(socket.AF_INET) or (public_ip if public_ip in v4 else
                                              (v4[0] if v4 else None))
    iface_ip6 = chosen.get(socket.AF_INET6) or (public_ipv6 if public_ipv6 in v6 else
                                                (v6[0] if v6 else None))
    return NodeInfo(iface=name, iface_index=index, public_ip=public_ip or iface_ip,
                    public_ipv6=public_ipv6 or iface_ip6, iface_mtu=mtu, iface_ip=iface_ip,
                    iface_ipv6=iface_ip6)


def _usable(family: int, address: str, wanted: int) -> bool:
    """An address of family `wanted` fit to advertise (IPv6 link-local is not)."""
    return family == wanted and not (family == socket.AF_INET6 and address.startswith("fe80"))


def match_iface_regex(pattern: "re.Pattern[str]", ifaces: list[tuple[int, str]], addrs,
                      families: tuple[int, ...]) -> tuple[int, dict[int, str]] | None:
    """flanneld's --iface-regex on (index, name) interfaces in index order and their
    (index, family, address, prefixlen) addresses: the first interface having, for each
    of `families`, an address the pattern matches (searched, unanchored, as Go's
    MatchString), with the addresses it matched; else the first interface whose name
    matches, with none; else None."""
    for index, _name in ifaces:
        hits = {}
        for family in families:
            hit = next((a for i, f, a, _ in addrs
                        if i == index and _usable(f, a, family) and pattern.search(a)), None)
            if hit is None:
                break
            hits[family] = hit
        else:
            return index, hits
    return next(((index, {}) for index, name in ifaces if pattern.search(name)), None)


def _regex_choice(sock: NetlinkSocket, regex: str, addrs,
                  families: tuple[int, ...]) -> tuple[int, dict[int, str]]:
    ifaces = sorted((link.index, link.name) for link in nl.all_links(sock))
    match = match_iface_regex(re.compile(regex), ifaces, addrs, families)
    if match is None:
        seen = "; ".join(f"{name} [{' '.join(a for i, _f, a, _p in addrs if i == index)}]"
                         for index, name in ifaces)
        raise DataplaneError(f"--iface-regex {regex}: matches no address or name of the "
                             f"interfaces here ({seen})")
    return match


def _route_choice(sock: NetlinkSocket, target: str) -> tuple[int, dict[int, str]]:
    """The interface and source address of the kernel's route to `target` (flanneld's
    --iface-can-reach)."""
    try:
        route, source = nl.route_to(sock, target)
    except OSError as e:
        raise DataplaneError(f"--iface-can-reach {target}: no route to it "
                             f"({e.strerror or e})") from None
    if not route.oif:
        raise DataplaneError(f"--iface-can-reach {target}: its route has no interface")
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    return route.oif, ({family: source} if source else {})


def _holder(addrs, ip: str) -> int | None:
    return next((i for i, _f, a, _p in addrs if a == ip), None)


def _default_route_iface(sock: NetlinkSocket) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in nl.routes(sock, family):
            if r.table == nl.RT_TABLE_MAIN and r.dst.endswith("/0") and r.oif:
                return r.oif
    return None


def select_node(settings: DaemonSettings, config: NetworkConfig) -> NodeInfo:
    """The uplink flanneld would pick: each --iface, then each --iface-regex, then
    --iface-can-reach, the first that finds an interface wins; none given: --public-ip's
    holder or the default route. DataplaneError says why none fits."""
    s = settings
    public_ip = str(s.public_ip) if s.public_ip else None
    public_ipv6 = str(s.public_ipv6) if s.public_ipv6 else None
    families = tuple(f for f, on in ((socket.AF_INET, config.enable_ipv4),
                                     (socket.AF_INET6, config.enable_ipv6)) if on)
    selectors = ([{"iface": spec} for spec in s.iface]
                 + [{"iface_regex": regex} for regex in s.iface_regex]
                 + ([{"can_reach": str(s.iface_can_reach)}] if s.iface_can_reach else []))
    errors = []
    for selector in selectors or [{}]:
        try:
            node = discover_node(public_ip=public_ip, public_ipv6=public_ipv6,
                                 families=families, **selector)
            break
        except DataplaneError as e:
            errors.append(str(e))
    else:
        raise DataplaneError(("no interface found: " if len(errors) > 1 else "") + "; ".join(errors))
    if config.enable_ipv6 and not node.public_ipv6:
        raise DataplaneError(f"EnableIPv6 is set but {node.iface} has no global IPv6 address; "
                             "pass --public-ipv6")
    return node
