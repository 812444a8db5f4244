"""The NETLINK_ROUTE socket: requests, ordered batches and dumps, and the kernel's refusals.

Every datagram is numbered in one place (`_number`): each message gets the next
sequence number, which is how answers are matched to requests. A request asks an
ACK of every message; a batch asks it of the last message only, which acts as a
barrier: the kernel handles a datagram's messages in order, so once that ACK (or
error) arrives every earlier answer has been read, and only refusals come back
for the others (docs/performance.md: 15000 objects in one join).
"""
from __future__ import annotations

import itertools
import os
import socket
from typing import Iterable, NamedTuple, Sequence

from cni_plugin.netlink.codec import HDR, I32, U16, U32, iter_messages, parse_error
from cni_plugin.netlink.constants import (
    NETLINK_CAP_ACK, NETLINK_EXT_ACK, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, SO_RCVBUFFORCE, SOL_NETLINK,
)


class NetlinkError(OSError):
    """A kernel refusal: `.errno`, and `.text` the kernel's extended-ACK message when given."""

    def __init__(self, code: int, text: str = ""):
        super().__init__(code, os.strerror(code) + (f" ({text})" if text else ""))
        self.text = text


class Reply(NamedTuple):
    """The answer to one request: errno (0 = success) and the objects it returned."""

    code: int
    text: str
    objects: list  # (buffer, payload offset, payload end) per returned object

    def error(self) -> NetlinkError:
        return NetlinkError(self.code, self.text)


class Failure(NamedTuple):
    index: int  # position of the refused request in what was passed to `batch`
    error: NetlinkError


class NetlinkSocket:
    """A raw NETLINK_ROUTE socket in the network namespace of the thread that created it.

    `groups` (GRP_*) makes it a listener for the kernel's notifications instead.
    """

    BATCH = 1000  # messages per datagram; their errors must fit into the receive buffer

    def __init__(self, groups: int = 0, rcvbuf: int = 16 << 20):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE)
        try:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            try:  # root may exceed rmem_max; dumps and event bursts need room
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
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

    def _number(self, buf: bytearray, sizes: Iterable[int], ack: str) -> dict[int, int]:
        """Give each message of `buf` the next sequence number (0 is skipped when they wrap)
        and ask an ACK of "every" message or of the "last" only (a dump: "none", it ends with
        NLMSG_DONE); returns seq -> position."""
        ack_all = ack == "every"
        index_of, off, last = {}, 0, 0
        for i, size in enumerate(sizes):
            self.seq = seq = (self.seq + 1) & 0xFFFFFFFF or 1
            index_of[seq] = i
            U32.pack_into(buf, off + 8, seq)
            if ack_all:
                U16.pack_into(buf, off + 6, U16.unpack_from(buf, off + 6)[0] | NLM_F_ACK)
            last, off = off, off + size
        if ack == "last" and index_of:
            U16.pack_into(buf, last + 6, U16.unpack_from(buf, last + 6)[0] | NLM_F_ACK)
        return index_of

    def _exchange(self, chunk: list[bytes], ack_all: bool) -> tuple[list, dict[int, list]]:
        """Send one datagram; per message its (errno, text) or None (no answer: its ACK was not
        asked for), and the objects answered, by position. Returns once the last message's
        ACK or error is read: the kernel answers a datagram's messages in order."""
        buf = bytearray(b"".join(chunk))
        index_of = self._number(buf, map(len, chunk), "every" if ack_all else "last")
        self.sock.send(buf)
        last = self.seq
        answers: list = [None] * len(chunk)
        objects: dict[int, list] = {}
        while True:
            data = self.recv()
            for mtype, flags, seq, off, end in iter_messages(data):
                i = index_of.get(seq)
                if i is None or answers[i] is not None:
                    continue  # a late answer to an abandoned request
                if mtype == NLMSG_ERROR:
                    answers[i] = parse_error(data, off, end, flags)
                elif mtype == NLMSG_DONE:
                    answers[i] = (-I32.unpack_from(data, off)[0] if end - off >= 4 else 0), ""
                else:
                    objects.setdefault(i, []).append((data, off, end))
                    continue
                if seq == last:
                    return answers, objects

    def request(self, requests: Sequence[bytes]) -> list[Reply]:
        """Send `requests` in one datagram, each acknowledged; one Reply per request, in order.

        A later request sees the effect of an earlier one; a refused request does not
        stop the ones after it.
        """
        if not requests:
            return []
        answers, objects = self._exchange(list(requests), ack_all=True)
        return [Reply(code, text, objects.get(i, [])) for i, (code, text) in enumerate(answers)]

    def batch(self, requests: Iterable[bytes]) -> list[Failure]:
        """Send many changes in datagrams of BATCH messages; the refused ones, by position.

        `requests` may be a generator: only one datagram is encoded at a time.
        """
        failures: list[Failure] = []
        it, start = iter(requests), 0
        while True:
            chunk = list(itertools.islice(it, self.BATCH))
            if not chunk:
                return failures
            answers, _objects = self._exchange(chunk, ack_all=False)
            for i, answer in enumerate(answers):
                if answer is not None and answer[0]:
                    failures.append(Failure(start + i, NetlinkError(*answer)))
            start += len(chunk)

    def dump(self, msg_type: int, body: bytes) -> list[tuple[bytes, int, int]]:
        """(buffer, payload offset, payload end) for each object of a dump.

        A dump interrupted by a concurrent change (NLM_F_DUMP_INTR) is taken again.
        """
        out: list = []
        for _attempt in range(5):
            buf = bytearray(HDR.pack(16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, 0, 0) + body)
            self._number(buf, (len(buf),), "none")
            self.sock.send(buf)
            seq, out, interrupted = self.seq, [], False
            while True:
                data = self.recv()
                for mtype, flags, mseq, off, end in iter_messages(data):
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_DONE:
                        break
                    if mtype == NLMSG_ERROR:
                        raise NetlinkError(*parse_error(data, off, end, flags))
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    out.append((data, off, end))
                else:
                    continue
                break
            if not interrupted:
                return out
        return out
