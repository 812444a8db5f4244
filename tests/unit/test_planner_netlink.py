"""The planner's wire format: hand-packed rtnetlink requests decode to what was meant."""
from __future__ import annotations

import errno
import socket
import struct

from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni_plugin import rtnl
from daemon import netlink as nl


def decode(msg_class, raw: bytes):
    m = msg_class(raw)
    m.decode()
    return m


def test_route_replace_is_an_onlink_replace_in_main():
    raw = nl.route_replace("10.244.2.0", 24, "10.244.2.0", 7, True)
    m = decode(rtmsg, raw)
    assert m["header"]["type"] == nl.RTM_NEWROUTE
    assert m["header"]["flags"] == nl.F_REQUEST | nl.F_CREATE | nl.F_REPLACE
    assert (m["dst_len"], m["table"], m["flags"]) == (24, 254, nl.RTNH_F_ONLINK)
    assert (m.get_attr("RTA_DST"), m.get_attr("RTA_GATEWAY"), m.get_attr("RTA_OIF")) == (
        "10.244.2.0", "10.244.2.0", 7)
    assert nl.parse_route(raw, 16, len(raw)) == nl.RouteInfo(
        socket.AF_INET, "10.244.2.0/24", "10.244.2.0", 7, True, nl.RTPROT_BOOT, 254)


def test_ipv6_route_and_delete():
    raw = nl.route_replace("fc00:0:0:2::", 64, "fd50::11", 3, False)
    assert nl.parse_route(raw, 16, len(raw))[:5] == (
        socket.AF_INET6, "fc00:0:0:2::/64", "fd50::11", 3, False)
    m = decode(rtmsg, nl.route_delete("10.244.2.0", 24))
    assert m["header"]["type"] == nl.RTM_DELROUTE and m.get_attr("RTA_DST") == "10.244.2.0"


def test_neighbour_and_fdb_entries():
    m = decode(ndmsg, nl.neigh_replace(5, "10.244.3.0", "02:aa:bb:cc:dd:03"))
    assert (m["family"], m["ifindex"], m["state"]) == (socket.AF_INET, 5, nl.NUD_PERMANENT)
    assert (m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")) == ("10.244.3.0", "02:aa:bb:cc:dd:03")
    raw = nl.fdb_replace(5, "02:aa:bb:cc:dd:03", "192.168.50.12")
    m = decode(ndmsg, raw)
    assert (m["family"], m["flags"], m["state"]) == (nl.AF_BRIDGE, nl.NTF_SELF, nl.NUD_PERMANENT)
    assert list(nl.neigh_rows([(raw, 16, len(raw))], {5})) == [
        (5, "192.168.50.12", "02:aa:bb:cc:dd:03", nl.NUD_PERMANENT)]
    assert list(nl.neigh_rows([(raw, 16, len(raw))], {6})) == []
    six = nl.neigh_replace(5, "fc00:0:0:3::", "06:00:00:00:00:03")
    assert next(nl.neigh_rows([(six, 16, len(six))], {5}))[1] == "fc00:0:0:3::"


def test_messages_split_and_error_text_is_read():
    first = nl.route_delete("10.244.2.0", 24)
    text = b"Nexthop has invalid gateway\0"
    tlv = struct.pack("=HH", 4 + len(text), nl.NLMSGERR_ATTR_MSG) + text + b"\0" * (-len(text) % 4)
    body = struct.pack("=i", -101) + first[:16] + tlv
    err = struct.pack("=IHHII", 16 + len(body), nl.NLMSG_ERROR, 0x100 | nl.F_ACK_TLVS, 9, 0) + body
    msgs = list(nl.iter_messages(first + err))
    assert [m[0] for m in msgs] == [nl.RTM_DELROUTE, nl.NLMSG_ERROR]
    _type, flags, seq, off, end = msgs[1]
    assert seq == 9 and nl.parse_error(first + err, off, end, flags) == (101, "Nexthop has invalid gateway")


class BatchKernel:
    """Answers a batch like the kernel: an error for each refused message, an ACK where asked."""

    def __init__(self, refuse: set[int]):
        self.refuse, self.out, self.seqs = refuse, [], []

    def send(self, buf):
        reply = b""
        for i, (_t, flags, seq, off, _e) in enumerate(rtnl.iter_messages(buf)):
            self.seqs.append(seq)
            if i in self.refuse or flags & rtnl.F_ACK:
                code = errno.ENETUNREACH if i in self.refuse else 0
                err = struct.pack("=i", -code) + bytes(buf[off - 16:off])
                reply += struct.pack("=IHHII", 16 + len(err), rtnl.NLMSG_ERROR, 0x100, seq, 0) + err
        self.out.append(reply)

    def recv(self, _size):
        return self.out.pop(0)


def test_send_batch_names_the_failed_request_across_a_sequence_wrap():
    sock = nl.RtnlSocket.__new__(nl.RtnlSocket)
    sock.seq = 0xFFFFFFFE  # the second request gets 0xFFFFFFFF, the third 1 (0 is skipped)
    sock.sock = BatchKernel(refuse={2})
    reqs = [nl.route_replace(f"10.244.{i}.0", 24, f"10.244.{i}.0", 3, True) for i in range(4)]
    failures, _ = sock.send_batch(reqs)
    assert sock.sock.seqs == [0xFFFFFFFF, 1, 2, 3]
    assert [(f.index, f.error.errno) for f in failures] == [(2, errno.ENETUNREACH)]
