"""See the packet path: tcpdump on an underlay port, frames decoded here (no text parsing).

`Capture(ns, port)` writes a pcap with tcpdump inside the underlay namespace; `packets()`
decodes each Ethernet frame into outer IPv4 addresses and, for VXLAN (UDP 8472), the
inner IPv4 addresses: exactly the two views of the packet the vxlan article draws.
"""
from __future__ import annotations

import os
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass

from tests.support.netns import NetNS

VXLAN_PORT = 8472
ETH_IPV4 = 0x0800
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: int
    udp_dport: int | None = None
    inner_src: str | None = None  # set for VXLAN frames
    inner_dst: str | None = None
    inner_proto: int | None = None
    udp_csum: int | None = None  # the outer UDP checksum field (0: the sender computed none)

    @property
    def is_vxlan(self) -> bool:
        return self.inner_src is not None


def _ipv4(data: bytes) -> tuple[str, str, int, bytes] | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    ihl = (data[0] & 0x0F) * 4
    src, dst = ".".join(map(str, data[12:16])), ".".join(map(str, data[16:20]))
    return src, dst, data[9], data[ihl:]


def decode_frame(frame: bytes) -> Packet | None:
    """An Ethernet frame -> Packet, None for anything that is not IPv4."""
    if len(frame) < 14 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4:
        return None
    outer = _ipv4(frame[14:])
    if outer is None:
        return None
    src, dst, proto, payload = outer
    if proto != PROTO_UDP or len(payload) < 8:
        return Packet(src, dst, proto)
    dport, csum = struct.unpack("!H2xH", payload[2:8])
    if dport != VXLAN_PORT or len(payload) < 8 + 8 + 14:
        return Packet(src, dst, proto, dport, udp_csum=csum)
    inner_frame = payload[8 + 8:]  # UDP header, VXLAN header
    inner = decode_frame(inner_frame)
    if inner is None:
        return Packet(src, dst, proto, dport, udp_csum=csum)
    return Packet(src, dst, proto, dport, inner.src, inner.dst, inner.proto, csum)


def read_pcap(path: str) -> list[bytes]:
    """Frames of a classic pcap file (what `tcpdump -w` writes)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    if endian is None:
        raise ValueError(f"{path} is not a pcap file")
    frames, offset = [], 24
    while offset + 16 <= len(data):
        incl_len = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        offset += 16
        frames.append(data[offset:offset + incl_len])
        offset += incl_len
    return frames


class Capture:
    """tcpdump on `iface` inside `ns`, from __enter__ to __exit__."""

    def __init__(self, ns: NetNS, iface: str):
        self.ns, self.iface = ns, iface
        fd, self.path = tempfile.mkstemp(prefix="flt-capture-", suffix=".pcap")
        os.close(fd)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Capture":
        # --immediate-mode -U: deliver and write each packet at once; -s 256 is enough for both header stacks.
        self.proc = self.ns.popen("tcpdump", "-Z", "root", "--immediate-mode", "-i", self.iface, "-U", "-s", "256", "-n",
                                  "-w", self.path, "ip", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ..." once the socket is bound
        if b"listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump did not start on {self.iface}: {line!r}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._wait_until_file_settles()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _wait_until_file_settles(self, quiet: float = 0.2, limit: float = 3.0) -> None:
        """tcpdump may still be writing the last frames (a loaded machine): wait until the
        file has not grown for `quiet` seconds."""
        deadline = time.monotonic() + limit
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now = os.path.getsize(self.path)
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.02)

    def packets(self) -> list[Packet]:
        try:
            return [p for p in map(decode_frame, read_pcap(self.path)) if p is not None]
        finally:
            os.unlink(self.path)
