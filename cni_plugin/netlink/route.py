"""Routes: one type (Route) for a wanted route and a route the kernel reports, one parser,
the planner's precompiled replace/delete and the pod's create-only add."""
from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple, Optional

from cni_plugin.netlink.codec import RTMSG, attr, attr_ip, attr_u32, attr_u32_at, iter_attrs, message, pton
from cni_plugin.netlink.constants import (
    NLM_F_NEW, NLM_F_REQUEST, NLM_F_SET, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN,
    RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_PREFSRC, RTA_TABLE, RTM_DELROUTE, RTM_GETROUTE,
    RTM_NEWROUTE, RTN_UNICAST, RTNH_F_ONLINK, RTPROT_BOOT,
)
from cni_plugin.netlink.nlsocket import NetlinkError, NetlinkSocket


class Route(NamedTuple):
    """`ip route replace <dst> via <gateway> dev <dev> [onlink]`.

    The planner names the device (`dev`); a route read from the kernel carries its
    interface index (`oif`), table and protocol and leaves `dev` to the reader, who
    knows the names: compare routes built from the same fields.
    """
    dst: str  # "10.244.2.0/24"
    gateway: str  # "" when directly connected
    dev: str = ""
    onlink: bool = False
    oif: int = 0
    table: int = RT_TABLE_MAIN
    protocol: int = RTPROT_BOOT

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.dst else socket.AF_INET


_ROUTE4 = struct.Struct("=IHHII BBBBBBBBI HHI HH4s HH4s HHi")
_ROUTE6 = struct.Struct("=IHHII BBBBBBBBI HHI HH16s HH16s HHi")
_DELROUTE4 = struct.Struct("=IHHII BBBBBBBBI HHI HH4s")
_DELROUTE6 = struct.Struct("=IHHII BBBBBBBBI HHI HH16s")
_GETROUTE4 = struct.Struct("=IHHII BBBBBBBBI HH4s")
_GETROUTE6 = struct.Struct("=IHHII BBBBBBBBI HH16s")


# ---------------------------------------------------------------- requests
# The planner's are one precompiled pack each; the socket fills in the sequence number.


def route_replace(route: Route, oif: int) -> bytes:
    """`ip route replace` of a gatewayed route through interface `oif` in the main table."""
    addr, plen = route.dst.split("/")
    family, dst_raw = pton(addr)
    _, gw_raw = pton(route.gateway)
    st = _ROUTE4 if family == socket.AF_INET else _ROUTE6
    return st.pack(st.size, RTM_NEWROUTE, NLM_F_SET, 0, 0,
                   family, int(plen), 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST,
                   RTNH_F_ONLINK if route.onlink else 0,
                   8, RTA_TABLE, RT_TABLE_MAIN, 4 + len(dst_raw), RTA_DST, dst_raw,
                   4 + len(gw_raw), RTA_GATEWAY, gw_raw, 8, RTA_OIF, oif)


def route_delete(route: Route) -> bytes:
    addr, plen = route.dst.split("/")
    family, dst_raw = pton(addr)
    st = _DELROUTE4 if family == socket.AF_INET else _DELROUTE6
    return st.pack(st.size, RTM_DELROUTE, NLM_F_REQUEST, 0, 0, family, int(plen), 0, 0,
                   RT_TABLE_MAIN, 0, 0, 0, 0, 8, RTA_TABLE, RT_TABLE_MAIN,
                   4 + len(dst_raw), RTA_DST, dst_raw)


def route_message(route: Route, mtype: int = RTM_NEWROUTE, flags: int = NLM_F_NEW) -> bytes:
    """Any route as a message: by default `ip route add` (create only: a route to the same
    destination and metric is refused with EEXIST, never replaced); also what the kernel
    reports for it. Scope link when there is no gateway."""
    addr, plen = route.dst.split("/")
    family, dst_raw = pton(addr)
    body = RTMSG.pack(family, int(plen), 0, 0, route.table if route.table < 256 else 252,
                      route.protocol, RT_SCOPE_UNIVERSE if route.gateway else RT_SCOPE_LINK,
                      RTN_UNICAST, RTNH_F_ONLINK if route.onlink else 0)
    body += attr_u32(RTA_TABLE, route.table) + attr_u32(RTA_OIF, route.oif)
    if int(plen):
        body += attr(RTA_DST, dst_raw)
    if route.gateway:
        body += attr(RTA_GATEWAY, pton(route.gateway)[1])
    return message(mtype, flags, body)


def route_get(ip: str) -> bytes:
    family, raw = pton(ip)
    st = _GETROUTE4 if family == socket.AF_INET else _GETROUTE6
    return st.pack(st.size, RTM_GETROUTE, NLM_F_REQUEST, 0, 0, family, len(raw) * 8, 0, 0, 0, 0, 0,
                   0, 0, 4 + len(raw), RTA_DST, raw)


# ---------------------------------------------------------------- parsing


def parse_route(buf, off: int, end: int) -> Route:
    """An RTM_*ROUTE payload; `dev` is left "" (see Route)."""
    family, dst_len, _s, _tos, table, proto, _scope, _rtype, rflags = RTMSG.unpack_from(buf, off)
    dst, gateway, oif = "", "", 0
    for atype, voff, vlen in iter_attrs(buf, off + RTMSG.size, end):
        if atype == RTA_DST:
            dst = attr_ip(buf, voff, vlen)
        elif atype == RTA_GATEWAY:
            gateway = attr_ip(buf, voff, vlen)
        elif atype == RTA_OIF:
            oif = attr_u32_at(buf, voff)
        elif atype == RTA_TABLE:
            table = attr_u32_at(buf, voff)
    if not dst:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    return Route(f"{dst}/{dst_len}", gateway, "", bool(rflags & RTNH_F_ONLINK), oif, table, proto)


def route_source(buf, off: int, end: int) -> str:
    """RTA_PREFSRC of a route message: the source address the kernel picks ("" if none)."""
    for atype, voff, vlen in iter_attrs(buf, off + RTMSG.size, end):
        if atype == RTA_PREFSRC:
            return attr_ip(buf, voff, vlen)
    return ""


# ---------------------------------------------------------------- calls


def routes(sock: NetlinkSocket, family: int) -> list[Route]:
    """Every route of `family`, all tables."""
    return [parse_route(*o) for o in sock.dump(RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0))]


def lookup_routes(sock: NetlinkSocket, ips: list[str]) -> dict[str, Optional[Route]]:
    """`ip route get` for many addresses in one datagram; None where there is no route."""
    replies = sock.request([route_get(ip) for ip in ips]) if ips else []
    return {ip: (parse_route(*r.objects[0]) if not r.code and r.objects else None)
            for ip, r in zip(ips, replies)}


def route_to(sock: NetlinkSocket, ip: str) -> tuple[Route, str]:
    """`ip route get <ip>`: the route the kernel would use and its source address.

    Raises NetlinkError (e.g. ENETUNREACH, EHOSTUNREACH) when there is none.
    """
    reply = sock.request([route_get(ip)])[0]
    if reply.code:
        raise reply.error()
    if not reply.objects:
        raise NetlinkError(errno.ENETUNREACH)
    buf, off, end = reply.objects[0]
    return parse_route(buf, off, end), route_source(buf, off, end)
