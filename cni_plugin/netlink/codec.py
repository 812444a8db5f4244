"""Framing and attributes: the bytes every object module builds on.

One precompiled `struct` per fixed-size part; parsing walks the receive buffer with
`unpack_from` and never copies a message (docs/performance.md).
"""
from __future__ import annotations

import socket
import struct
from typing import Iterator

from cni_plugin.netlink.constants import NLA_F_NESTED, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSGERR_ATTR_MSG

HDR = struct.Struct("=IHHII")  # length, type, flags, seq, port
ATTR = struct.Struct("=HH")  # length, type
U32 = struct.Struct("=I")
U16 = struct.Struct("=H")
I32 = struct.Struct("=i")
BE16 = struct.Struct("!H")
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type

# ---------------------------------------------------------------- encoding


def attr(atype: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    return ATTR.pack(4 + len(value), atype) + value + b"\0" * (-len(value) % 4)


def attr_u32(atype: int, value: int) -> bytes:
    return ATTR.pack(8, atype) + U32.pack(value)


def attr_str(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def nested(atype: int, *attrs: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(attrs))


def message(mtype: int, flags: int, body: bytes) -> bytes:
    """Header + body; the socket fills in the sequence number when it sends."""
    return HDR.pack(16 + len(body), mtype, flags, 0, 0) + body


def pton(ip: str) -> tuple[int, bytes]:
    if ":" in ip:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip)
    return socket.AF_INET, socket.inet_aton(ip)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


# ---------------------------------------------------------------- parsing


def iter_messages(buf: bytes) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (type, flags, seq, offset of payload, end) for each message in a datagram."""
    off, size = 0, len(buf)
    while off + 16 <= size:
        length, mtype, flags, seq, _port = HDR.unpack_from(buf, off)
        if length < 16:
            break
        yield mtype, flags, seq, off + 16, off + length
        off += (length + 3) & ~3


def sender_port(buf: bytes, payload_off: int) -> int:
    """nlmsg_pid of a message: a notification caused by a request carries the requester's port."""
    return U32.unpack_from(buf, payload_off - 4)[0]


def iter_attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, offset of value, length of value)."""
    while off + 4 <= end:
        alen, atype = ATTR.unpack_from(buf, off)
        if alen < 4:
            break
        yield atype & 0x7FFF, off + 4, alen - 4
        off += (alen + 3) & ~3


def attr_text(buf: bytes, off: int, length: int) -> str:
    return bytes(buf[off:off + length]).rstrip(b"\0").decode(errors="replace")


def attr_u32_at(buf: bytes, off: int) -> int:
    return U32.unpack_from(buf, off)[0]


def attr_ip(buf: bytes, off: int, length: int) -> str:
    """An IPv4 or IPv6 address attribute as text ("" when neither size)."""
    if length == 4:
        return socket.inet_ntop(socket.AF_INET, bytes(buf[off:off + 4]))
    if length == 16:
        return socket.inet_ntop(socket.AF_INET6, bytes(buf[off:off + 16]))
    return ""


def parse_error(buf: bytes, off: int, end: int, flags: int) -> tuple[int, str]:
    """(errno, extended-ACK text) from an NLMSG_ERROR payload; errno 0 is an ACK."""
    code = -I32.unpack_from(buf, off)[0]
    text = ""
    if flags & NLM_F_ACK_TLVS:
        inner_len = U32.unpack_from(buf, off + 4)[0]
        tlv = off + 4 + (16 if flags & NLM_F_CAPPED else inner_len)  # capped: the header only
        for atype, voff, vlen in iter_attrs(buf, tlv, end):
            if atype == NLMSGERR_ATTR_MSG:
                text = attr_text(buf, voff, vlen)
    return code, text
