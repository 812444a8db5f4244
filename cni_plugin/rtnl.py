"""Hand-packed rtnetlink: framing, attributes, parsers and a request socket.

pyroute2 spends 0.2-0.4 ms of Python per message and ~130 ms to import
(python-cni-performance.md sections 1, 3 and 7); one precompiled `struct.pack`
per message costs microseconds. Shared by the plugin's pod wiring
(cni_plugin/links.py) and the daemon's bulk programming (daemon/netlink.py), so
it imports nothing beyond the C-backed stdlib.
"""
from __future__ import annotations

import os
import socket
import struct
from typing import Iterator, NamedTuple, Sequence

# message types and flags (linux/rtnetlink.h, linux/netlink.h)
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
F_REQUEST, F_ACK, F_DUMP = 0x1, 0x4, 0x300
F_REPLACE, F_EXCL, F_CREATE = 0x100, 0x200, 0x400
F_ACK_TLVS, F_CAPPED, F_DUMP_INTR = 0x200, 0x100, 0x10
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000

AF_UNSPEC, AF_INET, AF_BRIDGE, AF_INET6 = 0, 2, 7, 10
IFF_UP = 0x1
RT_TABLE_MAIN = 254

_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


class NetlinkError(OSError):
    """A kernel refusal; `.text` carries the kernel's extended-ACK message when given."""

    def __init__(self, code: int, text: str = ""):
        super().__init__(code, os.strerror(code) + (f" ({text})" if text else ""))
        self.text = text


# ---------------------------------------------------------------- encoding


def attr(atype: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    return _ATTR.pack(4 + len(value), atype) + value + b"\0" * (-len(value) % 4)


def attr_u32(atype: int, value: int) -> bytes:
    return _ATTR.pack(8, atype) + _U32.pack(value)


def attr_str(atype: int, value: str) -> bytes:
    return attr(atype, value.encode() + b"\0")


def nested(atype: int, *attrs: bytes) -> bytes:
    return attr(atype | NLA_F_NESTED, b"".join(attrs))


def message(mtype: int, flags: int, body: bytes) -> bytes:
    """Header + body; the sequence number is filled in when sent."""
    return _HDR.pack(16 + len(body), mtype, flags, 0, 0) + body


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
        length, mtype, flags, seq, _pid = _HDR.unpack_from(buf, off)
        if length < 16:
            break
        yield mtype, flags, seq, off + 16, off + length
        off += (length + 3) & ~3


def sender_port(buf: bytes, payload_off: int) -> int:
    """nlmsg_pid of a message: a notification caused by a request carries the requester's port."""
    return _U32.unpack_from(buf, payload_off - 4)[0]


def iter_attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, offset of value, length of value)."""
    while off + 4 <= end:
        alen, atype = _ATTR.unpack_from(buf, off)
        if alen < 4:
            break
        yield atype & 0x7FFF, off + 4, alen - 4
        off += (alen + 3) & ~3


def attr_text(buf: bytes, off: int, length: int) -> str:
    return bytes(buf[off:off + length]).rstrip(b"\0").decode(errors="replace")


def parse_error(buf: bytes, off: int, end: int, flags: int) -> tuple[int, str]:
    """(errno, extended-ACK text) from an NLMSG_ERROR payload; errno 0 is an ACK."""
    code = -_I32.unpack_from(buf, off)[0]
    text = ""
    if flags & F_ACK_TLVS:
        inner_len = _U32.unpack_from(buf, off + 4)[0]
        tlv = off + 4 + (16 if flags & F_CAPPED else inner_len)  # capped: the header only
        for atype, voff, vlen in iter_attrs(buf, tlv, end):
            if atype == NLMSGERR_ATTR_MSG:
                text = attr_text(buf, voff, vlen)
    return code, text


class Reply(NamedTuple):
    """The answer to one request: errno (0 = success) and the objects it returned."""

    code: int
    text: str
    objects: list  # (buffer, payload offset, payload end) per returned object

    def error(self) -> NetlinkError:
        return NetlinkError(self.code, self.text)


# ---------------------------------------------------------------- the socket


class RtnlSocket:
    """A raw NETLINK_ROUTE socket in the namespace of the thread that created it."""

    def __init__(self, groups: int = 0, rcvbuf: int = 16 << 20):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        try:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            try:  # root may exceed rmem_max; dumps and event bursts need room
                self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                pass
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, groups))
        except BaseException:
            self.sock.close()
            raise
        if not groups:  # a request socket: never wait forever for the kernel's answer
            self.sock.settimeout(30)
        self.seq = int.from_bytes(os.urandom(2), "little") << 8

    def close(self) -> None:
        self.sock.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[0]

    def recv(self) -> bytes:
        return self.sock.recv(1 << 20)

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def call(self, requests: Sequence[bytes]) -> list[Reply]:
        """Send `requests` in one datagram, each acknowledged; one Reply per request, in order.

        The kernel handles a datagram's messages in order, so a later request sees the
        effect of an earlier one; a failed request does not stop the ones after it.
        """
        buf = bytearray(b"".join(requests))
        index_of, off = {}, 0  # seq -> position (sequence numbers skip 0 when they wrap)
        for i, req in enumerate(requests):
            index_of[self._next_seq()] = i
            _U32.pack_into(buf, off + 8, self.seq)
            _U16.pack_into(buf, off + 6, _U16.unpack_from(buf, off + 6)[0] | F_ACK)
            off += len(req)
        self.sock.send(buf)
        replies: list = [None] * len(requests)
        objects: list[list] = [[] for _ in requests]
        pending = len(requests)
        while pending:
            data = self.recv()
            for mtype, flags, seq, off, end in iter_messages(data):
                i = index_of.get(seq)
                if i is None or replies[i] is not None:
                    continue  # a stale answer to an abandoned request
                if mtype == NLMSG_ERROR or mtype == NLMSG_DONE:
                    if mtype == NLMSG_ERROR:
                        code, text = parse_error(data, off, end, flags)
                    else:
                        code, text = (-_I32.unpack_from(data, off)[0] if end - off >= 4 else 0), ""
                    replies[i] = Reply(code, text, objects[i])
                    pending -= 1
                else:
                    objects[i].append((data, off, end))
        return replies

    def dump_objects(self, msg_type: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """(buffer, payload offset, payload end) for each object of a dump.

        A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is taken again.
        """
        out: list = []
        for _attempt in range(5):
            seq = self._next_seq()
            self.sock.send(_HDR.pack(16 + len(body), msg_type, F_REQUEST | F_DUMP, seq, 0) + body)
            out, interrupted = [], False
            while True:
                buf = self.recv()
                for mtype, flags, mseq, off, end in iter_messages(buf):
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_DONE:
                        break
                    if mtype == NLMSG_ERROR:
                        raise NetlinkError(*parse_error(buf, off, end, flags))
                    interrupted |= bool(flags & F_DUMP_INTR)
                    out.append((buf, off, end))
                else:
                    continue
                break
            if not interrupted:
                return out
        return out
