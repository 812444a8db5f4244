"""Addresses: one type (Address), one parser, add and delete."""
from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

from cni_plugin.netlink.codec import IFADDR, attr, iter_attrs, message, pton
from cni_plugin.netlink.constants import (
    IFA_ADDRESS, IFA_BROADCAST, IFA_F_NODAD, IFA_LOCAL, NLM_F_NEW, NLM_F_REQUEST, RTM_DELADDR,
    RTM_GETADDR, RTM_NEWADDR,
)
from cni_plugin.netlink.link import checked
from cni_plugin.netlink.nlsocket import NetlinkSocket


class Address(NamedTuple):
    index: int
    family: int
    address: str
    prefixlen: int

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.address}/{self.prefixlen}")


def parse_address(buf, off: int, end: int) -> Address:
    """An RTM_*ADDR payload; the address is IFA_LOCAL where given (as `ip addr` shows it)."""
    family, prefixlen, _flags, _scope, index = IFADDR.unpack_from(buf, off)
    address = local = ""
    for atype, voff, vlen in iter_attrs(buf, off + IFADDR.size, end):
        if atype in (IFA_ADDRESS, IFA_LOCAL) and vlen in (4, 16):
            text = socket.inet_ntop(family, bytes(buf[voff:voff + vlen]))
            address, local = (text, local) if atype == IFA_ADDRESS else (address, text)
    return Address(index, family, local or address, prefixlen)


def address_message(mtype: int, flags: int, index: int, address: str, prefixlen: int) -> bytes:
    """`ip addr add|del <address>/<prefixlen> dev <index>` (IPv4 with `brd +`, IPv6 nodad)."""
    family, raw = pton(address)
    body = IFADDR.pack(family, prefixlen, IFA_F_NODAD if family == socket.AF_INET6 else 0, 0, index)
    body += attr(IFA_ADDRESS, raw)
    if family == socket.AF_INET:
        body += attr(IFA_LOCAL, raw)
        if prefixlen < 31 and mtype == RTM_NEWADDR:  # what `ip addr add ... brd +` and the Go plugins set
            net = ipaddress.IPv4Network((raw, prefixlen), strict=False)
            body += attr(IFA_BROADCAST, net.broadcast_address.packed)
    return message(mtype, flags, body)


def address_add(index: int, address: str, prefixlen: int) -> bytes:
    return address_message(RTM_NEWADDR, NLM_F_NEW, index, address, prefixlen)


def address_delete(index: int, address: str, prefixlen: int) -> bytes:
    return address_message(RTM_DELADDR, NLM_F_REQUEST, index, address, prefixlen)


def addresses(sock: NetlinkSocket, family: int = 0, index: int = 0) -> list[Address]:
    """The addresses of `family` (0: all) on link `index` (0: every link)."""
    found = [parse_address(*o) for o in sock.dump(RTM_GETADDR, IFADDR.pack(family, 0, 0, 0, index))]
    return [a for a in found if not index or a.index == index]


def add_address(sock: NetlinkSocket, index: int, address: str, prefixlen: int) -> None:
    checked(sock, address_add(index, address, prefixlen))


def delete_address(sock: NetlinkSocket, index: int, address: str, prefixlen: int) -> None:
    checked(sock, address_delete(index, address, prefixlen))
