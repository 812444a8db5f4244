"""Links and addresses over the hand-packed rtnetlink codec (cni_plugin/rtnl.py).

What node discovery and the VXLAN devices need: read links (with their vxlan
settings) and addresses, create, delete and modify a link, add and remove an
address. Done here rather than with pyroute2, whose import alone costs the daemon
about 9 MiB of its memory (tests/bench/bench_scale.py) and 130 ms of startup.
Errors are rtnl.NetlinkError (an OSError) carrying the kernel's errno and message.
"""
from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple, Optional

from cni_plugin import rtnl
from cni_plugin.rtnl import IFADDR, IFINFO, attr, attr_str, attr_u32, iter_attrs, message, nested

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFA_ADDRESS, IFA_LOCAL = 1, 2
VXLAN_ID, VXLAN_LINK, VXLAN_LOCAL, VXLAN_LEARNING = 1, 3, 4, 7
VXLAN_PORT, VXLAN_LOCAL6, VXLAN_UDP_CSUM, VXLAN_GBP = 15, 17, 18, 23
_BE16 = struct.Struct("!H")


class Vxlan(NamedTuple):
    """A VXLAN link's settings; None where the kernel did not report the attribute."""
    vni: Optional[int]
    link: Optional[int]
    local: str  # "" when unset
    port: Optional[int]
    learning: bool
    gbp: bool
    udp_csum: Optional[bool] = None  # outer UDP checksums on transmit (IPv4 underlay)


class Link(NamedTuple):
    index: int
    name: str
    flags: int
    mtu: int
    mac: str
    kind: str  # "" for a link without IFLA_LINKINFO (e.g. a physical NIC)
    vxlan: Optional[Vxlan]


class Address(NamedTuple):
    index: int
    family: int
    address: str
    prefixlen: int


# ---------------------------------------------------------------- parsing


def _u32(buf, off: int) -> int:
    return rtnl._U32.unpack_from(buf, off)[0]


def _parse_vxlan(buf, off: int, end: int) -> Vxlan:
    v = {VXLAN_LEARNING: False, VXLAN_GBP: False}
    for atype, voff, vlen in iter_attrs(buf, off, end):
        if atype in (VXLAN_ID, VXLAN_LINK) and vlen >= 4:
            v[atype] = _u32(buf, voff)
        elif atype == VXLAN_LOCAL and vlen == 4:
            v[atype] = socket.inet_ntop(socket.AF_INET, bytes(buf[voff:voff + 4]))
        elif atype == VXLAN_LOCAL6 and vlen == 16:
            v[atype] = socket.inet_ntop(socket.AF_INET6, bytes(buf[voff:voff + 16]))
        elif atype == VXLAN_PORT and vlen >= 2:
            v[atype] = _BE16.unpack_from(buf, voff)[0]
        elif atype == VXLAN_LEARNING and vlen >= 1:
            v[atype] = bool(buf[voff])
        elif atype == VXLAN_UDP_CSUM and vlen >= 1:
            v[atype] = bool(buf[voff])
        elif atype == VXLAN_GBP:
            v[atype] = True
    return Vxlan(v.get(VXLAN_ID), v.get(VXLAN_LINK), v.get(VXLAN_LOCAL) or v.get(VXLAN_LOCAL6, ""),
                 v.get(VXLAN_PORT), v[VXLAN_LEARNING], v[VXLAN_GBP], v.get(VXLAN_UDP_CSUM))


def parse_link(buf, off: int, end: int) -> Link:
    _family, _type, index, flags, _change = IFINFO.unpack_from(buf, off)
    name, mtu, mac, kind, vxlan = "", 0, "", "", None
    for atype, voff, vlen in iter_attrs(buf, off + IFINFO.size, end):
        if atype == IFLA_IFNAME:
            name = rtnl.attr_text(buf, voff, vlen)
        elif atype == IFLA_MTU:
            mtu = _u32(buf, voff)
        elif atype == IFLA_ADDRESS:
            mac = bytes(buf[voff:voff + vlen]).hex(":")
        elif atype == IFLA_LINKINFO:
            data = None
            for itype, ioff, ilen in iter_attrs(buf, voff, voff + vlen):
                if itype == IFLA_INFO_KIND:
                    kind = rtnl.attr_text(buf, ioff, ilen)
                elif itype == IFLA_INFO_DATA:
                    data = (ioff, ioff + ilen)
            if kind == "vxlan" and data:
                vxlan = _parse_vxlan(buf, *data)
    return Link(index, name, flags, mtu, mac, kind, vxlan)


def parse_address(buf, off: int, end: int) -> Address:
    family, prefixlen, _flags, _scope, index = IFADDR.unpack_from(buf, off)
    address = local = ""
    for atype, voff, vlen in iter_attrs(buf, off + IFADDR.size, end):
        if atype in (IFA_ADDRESS, IFA_LOCAL) and vlen in (4, 16):
            text = socket.inet_ntop(family, bytes(buf[voff:voff + vlen]))
            address, local = (text, local) if atype == IFA_ADDRESS else (address, text)
    return Address(index, family, address or local, prefixlen)


# ---------------------------------------------------------------- requests


def _one(sock: rtnl.RtnlSocket, request: bytes) -> list:
    reply = sock.call([request])[0]
    if reply.code:
        raise reply.error()
    return reply.objects


def get_link(sock: rtnl.RtnlSocket, name: str = "", index: int = 0) -> Optional[Link]:
    """The link called `name` (or with `index`), None if there is none."""
    if len(name.encode()) >= 16:  # longer than IFNAMSIZ: no such link (it may be an address)
        return None
    body = IFINFO.pack(0, 0, index, 0, 0) + (attr_str(IFLA_IFNAME, name) if name else b"")
    try:
        objects = _one(sock, message(rtnl.RTM_GETLINK, rtnl.F_REQUEST, body))
    except rtnl.NetlinkError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return parse_link(*objects[0]) if objects else None


def all_links(sock: rtnl.RtnlSocket) -> list[Link]:
    return [parse_link(*o) for o in sock.dump_objects(rtnl.RTM_GETLINK, IFINFO.pack(0, 0, 0, 0, 0))]


def addresses(sock: rtnl.RtnlSocket, family: int = 0, index: int = 0) -> list[Address]:
    found = [parse_address(*o) for o in sock.dump_objects(rtnl.RTM_GETADDR,
                                                           IFADDR.pack(family, 0, 0, 0, 0))]
    return [a for a in found if not index or a.index == index]


def add_vxlan(sock: rtnl.RtnlSocket, name: str, vni: int, link: int, local: str, port: int,
              learning: bool, gbp: bool, mac: str, mtu: int,
              udp_csum: Optional[bool] = None) -> None:
    """A VXLAN link; `udp_csum` None leaves outer UDP checksums at the kernel's default."""
    family, packed = rtnl.pton(local)
    data = [attr_u32(VXLAN_ID, vni), attr_u32(VXLAN_LINK, link),
            attr(VXLAN_LOCAL if family == socket.AF_INET else VXLAN_LOCAL6, packed),
            attr(VXLAN_PORT, _BE16.pack(port)), attr(VXLAN_LEARNING, bytes([int(learning)]))]
    if udp_csum is not None:
        data.append(attr(VXLAN_UDP_CSUM, bytes([int(udp_csum)])))
    if gbp:
        data.append(attr(VXLAN_GBP, b""))
    body = (IFINFO.pack(0, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
            + attr(IFLA_ADDRESS, rtnl.mac_bytes(mac)) + attr_u32(IFLA_MTU, mtu)
            + nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "vxlan"),
                     nested(IFLA_INFO_DATA, *data)))
    _one(sock, message(rtnl.RTM_NEWLINK, rtnl.F_REQUEST | rtnl.F_CREATE | rtnl.F_EXCL, body))


def delete_link(sock: rtnl.RtnlSocket, index: int) -> None:
    _one(sock, message(rtnl.RTM_DELLINK, rtnl.F_REQUEST, IFINFO.pack(0, 0, index, 0, 0)))


def set_link(sock: rtnl.RtnlSocket, index: int, *, up: bool = False, mtu: int = 0,
             mac: str = "") -> None:
    """Bring the link up and/or set its MTU or MAC (only what is given)."""
    flags = rtnl.IFF_UP if up else 0
    body = IFINFO.pack(0, 0, index, flags, flags)
    if mtu:
        body += attr_u32(IFLA_MTU, mtu)
    if mac:
        body += attr(IFLA_ADDRESS, rtnl.mac_bytes(mac))
    _one(sock, message(rtnl.RTM_NEWLINK, rtnl.F_REQUEST, body))


def _addr_request(mtype: int, flags: int, index: int, address: str, prefixlen: int) -> bytes:
    family, packed = rtnl.pton(address)
    body = IFADDR.pack(family, prefixlen, 0, 0, index) + attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    return message(mtype, flags, body)


def add_address(sock: rtnl.RtnlSocket, index: int, address: str, prefixlen: int) -> None:
    _one(sock, _addr_request(rtnl.RTM_NEWADDR, rtnl.F_REQUEST | rtnl.F_CREATE | rtnl.F_EXCL,
                             index, address, prefixlen))


def delete_address(sock: rtnl.RtnlSocket, index: int, address: str, prefixlen: int) -> None:
    _one(sock, _addr_request(rtnl.RTM_DELADDR, rtnl.F_REQUEST, index, address, prefixlen))
