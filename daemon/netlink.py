"""A small rtnetlink client for the bulk work: neighbours, FDB entries and routes.

pyroute2 spends 0.2-0.4 ms encoding each message, so programming 15000 objects
through it takes about 5 s (python-cni-performance.md section 7). Here every
message is one precompiled `struct.pack`, messages are concatenated and sent in
batches, success ACKs are suppressed (errors still come back, tagged with their
sequence number) and one ACKed message closes each batch. Dumps are parsed with
`unpack_from` on the receive buffer. Only what the data plane needs is here;
the generic framing, parsers and socket are cni_plugin/rtnl.py's (shared with the plugin).
"""
from __future__ import annotations

import errno
import itertools
import socket
import struct
from typing import Iterable, Iterator, NamedTuple

from cni_plugin import rtnl
from cni_plugin.rtnl import (  # noqa: F401 - the generic codec, re-exported under its old names
    _ATTR, _HDR, _U16, _U32, AF_BRIDGE, F_ACK, F_ACK_TLVS, F_CREATE, F_DUMP, F_REPLACE, F_REQUEST,
    NETLINK_CAP_ACK, NETLINK_EXT_ACK, NLMSG_DONE, NLMSG_ERROR, NLMSGERR_ATTR_MSG, RTM_DELADDR,
    RTM_DELLINK, RTM_DELNEIGH, RTM_DELROUTE, RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK,
    RTM_NEWNEIGH, RTM_NEWROUTE, SOL_NETLINK, NetlinkError, iter_attrs, iter_messages, parse_error,
    sender_port,
)
from cni_plugin.rtnl import IFINFO as _IFINFO
from cni_plugin.rtnl import NDMSG as _NDMSG
from cni_plugin.rtnl import RTMSG as _RTMSG
from cni_plugin.rtnl import mac_bytes as _mac_bytes
from cni_plugin.rtnl import pton as _pton

# multicast groups for the kernel watch
GRP_LINK, GRP_NEIGH, GRP_IPV4_IFADDR, GRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40
GRP_IPV6_IFADDR, GRP_IPV6_ROUTE = 0x100, 0x400

RT_TABLE_MAIN, RTPROT_KERNEL, RTPROT_BOOT = 254, 2, 3
RTN_UNICAST, RTNH_F_ONLINK = 1, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 7, 15
NDA_DST, NDA_LLADDR = 1, 2
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80
NTF_SELF = 0x02
IFLA_IFNAME = 3

_ROUTE4 = struct.Struct("=IHHII BBBBBBBBI HHI HH4s HH4s HHi")
_ROUTE6 = struct.Struct("=IHHII BBBBBBBBI HHI HH16s HH16s HHi")
_DELROUTE4 = struct.Struct("=IHHII BBBBBBBBI HHI HH4s")
_DELROUTE6 = struct.Struct("=IHHII BBBBBBBBI HHI HH16s")
_NEIGH4 = struct.Struct("=IHHII BxxxiHBB HH4s HH6sxx")
_NEIGH6 = struct.Struct("=IHHII BxxxiHBB HH16s HH6sxx")
_GETROUTE4 = struct.Struct("=IHHII BBBBBBBBI HH4s")
_GETROUTE6 = struct.Struct("=IHHII BBBBBBBBI HH16s")


class Failure(NamedTuple):
    index: int  # position of the failed request in the batch passed to `send_batch`
    error: NetlinkError


class RouteInfo(NamedTuple):
    family: int
    dst: str  # "10.244.2.0/24"
    gateway: str  # "" when directly connected
    oif: int
    onlink: bool
    protocol: int
    table: int


class NeighInfo(NamedTuple):
    family: int  # AF_INET / AF_INET6 for ARP/ND, AF_BRIDGE for FDB
    ifindex: int
    ip: str  # NDA_DST ("" when absent)
    mac: str  # NDA_LLADDR, lower case ("" when absent)
    state: int
    flags: int


def _mac_text(raw: bytes) -> str:
    return raw.hex(":")


# ---------------------------------------------------------------- message encoders
# Each returns the payload-with-header for one request; `seq` is patched in by send_batch.


def route_replace(dst: str, prefixlen: int, gateway: str, oif: int, onlink: bool) -> bytes:
    family, dst_raw = _pton(dst)
    _, gw_raw = _pton(gateway)
    st = _ROUTE4 if family == socket.AF_INET else _ROUTE6
    return st.pack(st.size, RTM_NEWROUTE, F_REQUEST | F_CREATE | F_REPLACE, 0, 0,
                   family, prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST,
                   RTNH_F_ONLINK if onlink else 0,
                   8, RTA_TABLE, RT_TABLE_MAIN, 4 + len(dst_raw), RTA_DST, dst_raw,
                   4 + len(gw_raw), RTA_GATEWAY, gw_raw, 8, RTA_OIF, oif)


def route_delete(dst: str, prefixlen: int) -> bytes:
    family, dst_raw = _pton(dst)
    st = _DELROUTE4 if family == socket.AF_INET else _DELROUTE6
    return st.pack(st.size, RTM_DELROUTE, F_REQUEST, 0, 0, family, prefixlen, 0, 0,
                   RT_TABLE_MAIN, 0, 0, 0, 0, 8, RTA_TABLE, RT_TABLE_MAIN,
                   4 + len(dst_raw), RTA_DST, dst_raw)


def _neigh(msg_type: int, flags: int, family: int, ifindex: int, ip: str, mac: str,
           state: int, ntf: int) -> bytes:
    _, ip_raw = _pton(ip)
    st = _NEIGH4 if len(ip_raw) == 4 else _NEIGH6
    return st.pack(st.size, msg_type, flags, 0, 0, family, ifindex, state, ntf, 0,
                   4 + len(ip_raw), NDA_DST, ip_raw, 10, NDA_LLADDR, _mac_bytes(mac))


def neigh_replace(ifindex: int, ip: str, mac: str) -> bytes:
    """`ip neigh replace <ip> lladdr <mac> dev <ifindex> nud permanent`."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return _neigh(RTM_NEWNEIGH, F_REQUEST | F_CREATE | F_REPLACE, family, ifindex, ip, mac,
                  NUD_PERMANENT, 0)


def neigh_delete(ifindex: int, ip: str, mac: str) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return _neigh(RTM_DELNEIGH, F_REQUEST, family, ifindex, ip, mac, 0, 0)


def fdb_replace(ifindex: int, mac: str, dst: str) -> bytes:
    """`bridge fdb replace <mac> dev <ifindex> dst <dst> self permanent`."""
    return _neigh(RTM_NEWNEIGH, F_REQUEST | F_CREATE | F_REPLACE, AF_BRIDGE, ifindex, dst, mac,
                  NUD_PERMANENT, NTF_SELF)


def fdb_delete(ifindex: int, mac: str, dst: str) -> bytes:
    return _neigh(RTM_DELNEIGH, F_REQUEST, AF_BRIDGE, ifindex, dst, mac, 0, NTF_SELF)


def route_get(ip: str) -> bytes:
    family, raw = _pton(ip)
    st = _GETROUTE4 if family == socket.AF_INET else _GETROUTE6
    return st.pack(st.size, RTM_GETROUTE, F_REQUEST, 0, 0, family, len(raw) * 8, 0, 0, 0, 0, 0,
                   0, 0, 4 + len(raw), RTA_DST, raw)


# ---------------------------------------------------------------- parsers


def parse_route(buf: bytes, off: int, end: int) -> RouteInfo:
    family, dst_len, _s, _tos, table, proto, _scope, _rtype, rflags = _RTMSG.unpack_from(buf, off)
    dst, gateway, oif = "", "", 0
    for atype, voff, vlen in iter_attrs(buf, off + _RTMSG.size, end):
        if atype == RTA_DST:
            dst = socket.inet_ntop(family, bytes(buf[voff:voff + vlen]))
        elif atype == RTA_GATEWAY:
            gateway = socket.inet_ntop(family, bytes(buf[voff:voff + vlen]))
        elif atype == RTA_OIF:
            oif = _U32.unpack_from(buf, voff)[0]
        elif atype == RTA_TABLE:
            table = _U32.unpack_from(buf, voff)[0]
    if not dst:
        dst = "0.0.0.0" if family == socket.AF_INET else "::"
    return RouteInfo(family, f"{dst}/{dst_len}", gateway, oif, bool(rflags & RTNH_F_ONLINK),
                     proto, table)


def route_source(buf: bytes, off: int, end: int) -> str:
    """RTA_PREFSRC of a route message: the source address the kernel picks ("" if none)."""
    family = buf[off]
    for atype, voff, vlen in iter_attrs(buf, off + _RTMSG.size, end):
        if atype == RTA_PREFSRC:
            return socket.inet_ntop(family, bytes(buf[voff:voff + vlen]))
    return ""


def parse_neigh(buf: bytes, off: int, end: int) -> NeighInfo:
    family, ifindex, state, nflags, _ntype = _NDMSG.unpack_from(buf, off)
    ip, mac = "", ""
    for atype, voff, vlen in iter_attrs(buf, off + _NDMSG.size, end):
        if atype == NDA_DST:
            ip = socket.inet_ntop(socket.AF_INET if vlen == 4 else socket.AF_INET6,
                                  bytes(buf[voff:voff + vlen]))
        elif atype == NDA_LLADDR:
            mac = _mac_text(bytes(buf[voff:voff + vlen]))
    return NeighInfo(family, ifindex, ip, mac, state, nflags)


def neigh_rows(dumped: list[tuple[bytes, int, int]], ifindexes) -> Iterator[tuple]:
    """(ifindex, ip, mac, state) of dumped neighbours/FDB entries on `ifindexes`.

    The hot read of a reconcile (two dumps of N entries): ifindex is checked before
    any attribute is decoded, and attributes are walked inline.
    """
    unpack_nd, unpack_attr = _NDMSG.unpack_from, _ATTR.unpack_from
    ntop, inet, inet6 = socket.inet_ntop, socket.AF_INET, socket.AF_INET6
    for buf, off, end in dumped:
        _family, ifindex, state, _flags, _type = unpack_nd(buf, off)
        if ifindex not in ifindexes:
            continue
        ip = mac = ""
        a = off + 12
        while a + 4 <= end:
            alen, atype = unpack_attr(buf, a)
            if alen < 4:
                break
            if atype == NDA_DST:
                ip = ntop(inet if alen == 8 else inet6, buf[a + 4:a + alen])
            elif atype == NDA_LLADDR:
                mac = buf[a + 4:a + alen].hex(":")
            a += (alen + 3) & ~3
        yield ifindex, ip, mac, state


def parse_link(buf: bytes, off: int, end: int) -> tuple[int, int, int, str]:
    """(ifindex, IFF_* flags, IFF_* flags that changed, name) of an RTM_*LINK payload."""
    _family, _type, index, flags, change = _IFINFO.unpack_from(buf, off)
    name = ""
    for atype, voff, vlen in iter_attrs(buf, off + _IFINFO.size, end):
        if atype == IFLA_IFNAME:
            name = bytes(buf[voff:voff + vlen]).rstrip(b"\0").decode()
    return index, flags, change, name


# ---------------------------------------------------------------- the socket


class RtnlSocket(rtnl.RtnlSocket):
    """A raw NETLINK_ROUTE socket in the caller's network namespace, with batched sends."""

    BATCH = 1000  # requests per sendto; their errors must fit into the receive buffer

    def __init__(self, groups: int = 0):
        # a join's echoes arrive in bursts on a watching socket: give it more room
        super().__init__(groups, rcvbuf=(64 if groups else 16) << 20)

    def send_batch(self, requests: Iterable[bytes], expect_reply: bool = False,
                   ) -> tuple[list[Failure], dict[int, RouteInfo]]:
        """Send requests in batches; return failures and, for GET requests, the replies by index.

        Success ACKs are not requested except on each batch's last message, which
        acts as a barrier: the kernel handles a datagram's messages in order, so once
        that ACK (or error) arrives every earlier answer has been read. `requests`
        may be a generator: only one batch is encoded at a time.
        """
        failures: list[Failure] = []
        replies: dict[int, RouteInfo] = {}
        it, start = iter(requests), 0
        while True:
            chunk = list(itertools.islice(it, self.BATCH))
            if not chunk:
                return failures, replies
            buf = bytearray(b"".join(chunk))
            index_of, off = {}, 0
            for i, req in enumerate(chunk):  # patch sequence numbers in place
                index_of[self._next_seq()] = start + i
                _U32.pack_into(buf, off + 8, self.seq)
                last_off, off = off, off + len(req)
            if not expect_reply:
                _U16.pack_into(buf, last_off + 6, _U16.unpack_from(buf, last_off + 6)[0] | F_ACK)
            self.sock.send(buf)
            self._collect(index_of, self.seq, failures, replies, expect_reply)
            start += len(chunk)

    def _collect(self, index_of: dict[int, int], last: int, failures: list[Failure],
                 replies: dict[int, tuple], expect_reply: bool) -> None:
        """Read answers of one batch; `index_of` maps each sequence number sent to its request."""
        answered = 0
        want = len(index_of) if expect_reply else None
        while True:
            buf = self.recv()
            for mtype, flags, seq, off, end in iter_messages(buf):
                index = index_of.get(seq)
                if index is None:  # a late answer to an earlier batch
                    continue
                if mtype == NLMSG_ERROR:
                    code, text = parse_error(buf, off, end, flags)
                    if code:
                        failures.append(Failure(index, NetlinkError(code, text)))
                    answered += 1
                    if seq == last and not expect_reply:
                        return
                elif mtype == RTM_NEWROUTE and expect_reply:
                    replies[index] = parse_route(buf, off, end)
                    answered += 1
                if want is not None and answered >= want:
                    return

    def dump(self, msg_type: int, family: int) -> list[tuple[bytes, int, int]]:
        """(buffer, payload offset, payload end) for each route or neighbour of `family`."""
        if msg_type == RTM_GETROUTE:
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        else:
            body = _NDMSG.pack(family, 0, 0, 0, 0)
        return self.dump_objects(msg_type, body)

    def routes(self, family: int) -> list[RouteInfo]:
        return [parse_route(b, o, e) for b, o, e in self.dump(RTM_GETROUTE, family)]

    def neighbours(self, family: int) -> list[NeighInfo]:
        return [parse_neigh(b, o, e) for b, o, e in self.dump(RTM_GETNEIGH, family)]

    def lookup_routes(self, ips: list[str]) -> dict[str, RouteInfo | None]:
        """`ip route get` for many addresses at once; None where there is no route."""
        failures, replies = self.send_batch([route_get(ip) for ip in ips], expect_reply=True)
        return {ip: replies.get(i) for i, ip in enumerate(ips)}

    def route_to(self, ip: str) -> tuple[RouteInfo, str]:
        """`ip route get <ip>`: the route the kernel would use and its source address.

        Raises NetlinkError (e.g. ENETUNREACH, EHOSTUNREACH) when there is none.
        """
        reply = self.call([route_get(ip)])[0]
        if reply.code:
            raise reply.error()
        if not reply.objects:
            raise NetlinkError(errno.ENETUNREACH)
        buf, off, end = reply.objects[0]
        return parse_route(buf, off, end), route_source(buf, off, end)
