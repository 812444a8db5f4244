"""Neighbours (ARP/ND) and FDB entries: one type each, one parser, replace and delete."""
from __future__ import annotations

import socket
import struct
from typing import Iterator, NamedTuple, Union

from cni_plugin.netlink.codec import ATTR, NDMSG, attr_ip, iter_attrs, mac_bytes
from cni_plugin.netlink.constants import (
    AF_BRIDGE, NDA_DST, NDA_LLADDR, NLM_F_REQUEST, NLM_F_SET, NTF_SELF, NUD_PERMANENT,
    RTM_DELNEIGH, RTM_GETNEIGH, RTM_NEWNEIGH,
)
from cni_plugin.netlink.nlsocket import NetlinkSocket


class Neigh(NamedTuple):
    """`ip neigh replace <ip> lladdr <mac> dev <dev> nud permanent`.

    As with Route, a neighbour read from the kernel carries `ifindex` and `state` and
    leaves `dev` to the reader."""
    dev: str
    ip: str
    mac: str
    ifindex: int = 0
    state: int = NUD_PERMANENT


class Fdb(NamedTuple):
    """`bridge fdb replace <mac> dev <dev> dst <dst> self permanent`."""
    dev: str
    mac: str
    dst: str
    ifindex: int = 0
    state: int = NUD_PERMANENT


_NEIGH4 = struct.Struct("=IHHII BxxxiHBB HH4s HH6sxx")
_NEIGH6 = struct.Struct("=IHHII BxxxiHBB HH16s HH6sxx")


# ---------------------------------------------------------------- requests


def _neigh(msg_type: int, flags: int, family: int, ifindex: int, ip: str, mac: str,
           state: int, ntf: int) -> bytes:
    raw = socket.inet_pton(socket.AF_INET6, ip) if ":" in ip else socket.inet_aton(ip)
    st = _NEIGH4 if len(raw) == 4 else _NEIGH6
    return st.pack(st.size, msg_type, flags, 0, 0, family, ifindex, state, ntf, 0,
                   4 + len(raw), NDA_DST, raw, 10, NDA_LLADDR, mac_bytes(mac))


def neigh_replace(ifindex: int, ip: str, mac: str, state: int = NUD_PERMANENT) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return _neigh(RTM_NEWNEIGH, NLM_F_SET, family, ifindex, ip, mac, state, 0)


def neigh_delete(ifindex: int, ip: str, mac: str) -> bytes:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return _neigh(RTM_DELNEIGH, NLM_F_REQUEST, family, ifindex, ip, mac, 0, 0)


def fdb_replace(ifindex: int, mac: str, dst: str, state: int = NUD_PERMANENT) -> bytes:
    return _neigh(RTM_NEWNEIGH, NLM_F_SET, AF_BRIDGE, ifindex, dst, mac, state, NTF_SELF)


def fdb_delete(ifindex: int, mac: str, dst: str) -> bytes:
    return _neigh(RTM_DELNEIGH, NLM_F_REQUEST, AF_BRIDGE, ifindex, dst, mac, 0, NTF_SELF)


# ---------------------------------------------------------------- parsing


def parse_neigh(buf, off: int, end: int) -> Union[Neigh, Fdb]:
    """An RTM_*NEIGH payload: an Fdb for AF_BRIDGE, else a Neigh; `dev` is left ""."""
    family, ifindex, state, _flags, _type = NDMSG.unpack_from(buf, off)
    ip, mac = "", ""
    for atype, voff, vlen in iter_attrs(buf, off + NDMSG.size, end):
        if atype == NDA_DST:
            ip = attr_ip(buf, voff, vlen)
        elif atype == NDA_LLADDR:
            mac = bytes(buf[voff:voff + vlen]).hex(":")
    if family == AF_BRIDGE:
        return Fdb("", mac, ip, ifindex, state)
    return Neigh("", ip, mac, ifindex, state)


def neigh_rows(dumped: list[tuple[bytes, int, int]], ifindexes) -> Iterator[tuple]:
    """(ifindex, ip, mac, state) of dumped neighbours/FDB entries on `ifindexes`.

    The hot read of a reconcile (two dumps of N entries): ifindex is checked before
    any attribute is decoded, and attributes are walked inline.
    """
    unpack_nd, unpack_attr = NDMSG.unpack_from, ATTR.unpack_from
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


# ---------------------------------------------------------------- calls


def dump_neighbours(sock: NetlinkSocket, family: int) -> list[tuple[bytes, int, int]]:
    """The raw dump of `family`'s neighbours (AF_BRIDGE: the FDB), for neigh_rows."""
    return sock.dump(RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0))


def neighbours(sock: NetlinkSocket, family: int) -> list[Union[Neigh, Fdb]]:
    return [parse_neigh(*o) for o in dump_neighbours(sock, family)]
