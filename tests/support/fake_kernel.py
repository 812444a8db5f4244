"""A fake kernel behind a real NetlinkSocket, for unit tests.

`FakeKernel(...).socket()` is a NetlinkSocket whose raw socket is this object: the
socket's own framing, sequence numbers, batching and dump loop run unchanged, and
this side answers as rtnetlink would. It records every request, answers dumps and
GETLINK/GETROUTE from the canned objects it was given, ACKs where asked, and refuses
requests with an injected errno (`refuse`). It never changes its canned objects.
"""
from __future__ import annotations

import errno as errnos
import ipaddress
from typing import Callable, Iterable, Optional

from cni_plugin import netlink as nl
from cni_plugin.netlink.codec import HDR, I32, RTMSG, attr, attr_ip, iter_attrs, iter_messages
from cni_plugin.netlink.constants import (
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR,
    NLMSGERR_ATTR_MSG, RTA_DST, RTM_GETADDR, RTM_GETLINK, RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWADDR,
)

NLM_F_MULTI = 0x2


class FakeKernel:
    def __init__(self, links: Iterable[nl.Link] = (), addresses: Iterable[nl.Address] = (),
                 routes: Iterable[nl.Route] = (), neighbours: Iterable[nl.Neigh | nl.Fdb] = (),
                 port: int = 4242):
        self.links, self.addresses = list(links), list(addresses)
        self.routes, self.neighbours = list(routes), list(neighbours)
        self.port = port
        self.requests: list[bytes] = []  # every message received, header included, in order
        self.datagrams: list[bytes] = []  # as sent, one per send()
        self._refusals: list[tuple[Callable[[int, int, bytes], bool], int, str]] = []
        self._out: list[bytes] = []

    # ------------------------------------------------ test-facing
    def socket(self) -> nl.NetlinkSocket:
        sock = nl.NetlinkSocket.__new__(nl.NetlinkSocket)
        sock.sock, sock.seq = self, 0x100
        return sock

    def refuse(self, code: int, *, mtype: Optional[int] = None, nth: Optional[int] = None,
               text: str = "", times: int = 1) -> None:
        """Refuse with `code` the next `times` requests of type `mtype`, or the request that
        is the `nth` (0-based) of all requests this kernel receives."""
        def match(i: int, t: int, _raw: bytes) -> bool:
            return (mtype is None or t == mtype) and (nth is None or i == nth)
        for _ in range(times):
            self._refusals.append((match, code, text))

    def sent(self, mtype: int) -> list[bytes]:
        """The requests of type `mtype` received, in order."""
        return [r for r in self.requests if HDR.unpack_from(r, 0)[1] == mtype]

    # ------------------------------------------------ the raw socket's side
    def send(self, buf) -> int:
        data = bytes(buf)
        self.datagrams.append(data)
        out = bytearray()
        for mtype, flags, seq, off, end in iter_messages(data):
            raw = data[off - 16:end]
            self.requests.append(raw)
            out += self._answer(len(self.requests) - 1, mtype, flags, seq, raw)
        if out:
            self._out.append(bytes(out))
        return len(data)

    def recv(self, _size: int) -> bytes:
        if not self._out:
            raise TimeoutError("the fake kernel has nothing to answer")  # a real socket would time out
        return self._out.pop(0)

    def getsockname(self):
        return (self.port, 0)

    def settimeout(self, _t) -> None:
        pass

    def close(self) -> None:
        pass

    # ------------------------------------------------ answers
    def _answer(self, i: int, mtype: int, flags: int, seq: int, raw: bytes) -> bytes:
        for k, (match, code, text) in enumerate(self._refusals):
            if match(i, mtype, raw):
                del self._refusals[k]
                return _error(seq, code, raw, text)
        if flags & NLM_F_DUMP == NLM_F_DUMP:
            objects = self._dump(mtype, raw[16:])
            return b"".join(_framed(m, seq, NLM_F_MULTI) for m in objects) + _framed(
                HDR.pack(20, NLMSG_DONE, 0, 0, 0) + I32.pack(0), seq, NLM_F_MULTI)
        objects: list[bytes] = []
        if mtype == RTM_GETLINK:
            want = nl.parse_link(raw, 16, len(raw))
            found = next((x for x in self.links if (want.index and x.index == want.index)
                          or (not want.index and x.name == want.name)), None)
            if found is None:
                return _error(seq, errnos.ENODEV, raw)
            objects = [nl.link_message(found, nl.RTM_NEWLINK, 0)]
        elif mtype == RTM_GETROUTE:
            found = self._route_to(raw)
            if found is None:
                return _error(seq, errnos.ENETUNREACH, raw)
            objects = [nl.route_message(found, nl.RTM_NEWROUTE, 0)]
        answer = b"".join(_framed(m, seq, 0) for m in objects)
        if flags & NLM_F_ACK:
            answer += _error(seq, 0, raw)
        return answer

    def _dump(self, mtype: int, body: bytes) -> list[bytes]:
        family = body[0] if body else 0
        if mtype == RTM_GETLINK:
            return [nl.link_message(x, nl.RTM_NEWLINK, 0) for x in self.links]
        if mtype == RTM_GETADDR:
            return [nl.address_message(RTM_NEWADDR, 0, a.index, a.address, a.prefixlen)
                    for a in self.addresses if family in (0, a.family)]
        if mtype == RTM_GETROUTE:
            return [nl.route_message(r, nl.RTM_NEWROUTE, 0) for r in self.routes if family in (0, r.family)]
        if mtype == RTM_GETNEIGH:
            return [_neigh_message(n) for n in self.neighbours if family in (0, _family(n))]
        return []

    def _route_to(self, raw: bytes) -> Optional[nl.Route]:
        target = ""
        for atype, voff, vlen in iter_attrs(raw, 16 + RTMSG.size, len(raw)):
            if atype == RTA_DST:
                target = attr_ip(raw, voff, vlen)
        ip = ipaddress.ip_address(target)
        matching = [r for r in self.routes if r.family == nl.Route(f"{ip}/0", "").family
                    and ip in ipaddress.ip_network(r.dst)]
        return max(matching, key=lambda r: ipaddress.ip_network(r.dst).prefixlen, default=None)


def _family(n) -> int:
    if isinstance(n, nl.Fdb):
        return nl.AF_BRIDGE
    return nl.AF_INET6 if ":" in n.ip else nl.AF_INET


def _neigh_message(n) -> bytes:
    if isinstance(n, nl.Fdb):
        return nl.fdb_replace(n.ifindex, n.mac, n.dst, n.state)
    return nl.neigh_replace(n.ifindex, n.ip, n.mac, n.state)


def _framed(msg: bytes, seq: int, flags: int) -> bytes:
    """`msg` with the kernel's header fields: `seq` of the request, `flags`, port 0."""
    length, mtype, _flags, _seq, _port = HDR.unpack_from(msg, 0)
    return HDR.pack(length, mtype, flags, seq, 0) + msg[16:length] + b"\0" * (-length % 4)


def _error(seq: int, code: int, request: bytes, text: str = "") -> bytes:
    """NLMSG_ERROR as a socket with NETLINK_CAP_ACK and NETLINK_EXT_ACK gets it."""
    body = I32.pack(-code) + request[:16]
    flags = NLM_F_CAPPED
    if text:
        body += attr(NLMSGERR_ATTR_MSG, text.encode() + b"\0")
        flags |= NLM_F_ACK_TLVS
    return HDR.pack(16 + len(body), NLMSG_ERROR, flags, seq, 0) + body

