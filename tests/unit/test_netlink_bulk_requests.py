"""The data plane's wire format: hand-packed rtnetlink requests decode to what was meant,
and a batch names its refused requests."""
from __future__ import annotations

import errno
import socket
import struct

from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni_plugin import netlink as nl
from cni_plugin.netlink.codec import iter_messages, parse_error
from cni_plugin.netlink.constants import (
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_SET, NLMSG_ERROR, NLMSGERR_ATTR_MSG, NTF_SELF, RTNH_F_ONLINK,
)
from tests.support.fake_kernel import FakeKernel


def decode(msg_class, raw: bytes):
    m = msg_class(raw)
    m.decode()
    return m


def test_route_replace_is_an_onlink_replace_in_main():
    raw = nl.route_replace(nl.Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True), 7)
    m = decode(rtmsg, raw)
    assert m["header"]["type"] == nl.RTM_NEWROUTE
    assert m["header"]["flags"] == NLM_F_SET
    assert (m["dst_len"], m["table"], m["flags"]) == (24, 254, RTNH_F_ONLINK)
    assert (m.get_attr("RTA_DST"), m.get_attr("RTA_GATEWAY"), m.get_attr("RTA_OIF")) == (
        "10.244.2.0", "10.244.2.0", 7)
    assert nl.parse_route(raw, 16, len(raw)) == nl.Route(
        "10.244.2.0/24", "10.244.2.0", "", True, 7, 254, nl.RTPROT_BOOT)


def test_ipv6_route_and_delete():
    raw = nl.route_replace(nl.Route("fc00:0:0:2::/64", "fd50::11", "eth0", False), 3)
    assert nl.parse_route(raw, 16, len(raw))[:5] == ("fc00:0:0:2::/64", "fd50::11", "", False, 3)
    m = decode(rtmsg, nl.route_delete(nl.Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True)))
    assert m["header"]["type"] == nl.RTM_DELROUTE and m.get_attr("RTA_DST") == "10.244.2.0"


def test_neighbour_and_fdb_entries():
    m = decode(ndmsg, nl.neigh_replace(5, "10.244.3.0", "02:aa:bb:cc:dd:03"))
    assert (m["family"], m["ifindex"], m["state"]) == (socket.AF_INET, 5, nl.NUD_PERMANENT)
    assert (m.get_attr("NDA_DST"), m.get_attr("NDA_LLADDR")) == ("10.244.3.0", "02:aa:bb:cc:dd:03")
    raw = nl.fdb_replace(5, "02:aa:bb:cc:dd:03", "192.168.50.12")
    m = decode(ndmsg, raw)
    assert (m["family"], m["flags"], m["state"]) == (nl.AF_BRIDGE, NTF_SELF, nl.NUD_PERMANENT)
    assert nl.parse_neigh(raw, 16, len(raw)) == nl.Fdb("", "02:aa:bb:cc:dd:03", "192.168.50.12", 5)
    assert list(nl.neigh_rows([(raw, 16, len(raw))], {5})) == [
        (5, "192.168.50.12", "02:aa:bb:cc:dd:03", nl.NUD_PERMANENT)]
    assert list(nl.neigh_rows([(raw, 16, len(raw))], {6})) == []
    six = nl.neigh_replace(5, "fc00:0:0:3::", "06:00:00:00:00:03")
    assert next(nl.neigh_rows([(six, 16, len(six))], {5}))[1] == "fc00:0:0:3::"
    assert nl.parse_neigh(six, 16, len(six)) == nl.Neigh("", "fc00:0:0:3::", "06:00:00:00:00:03", 5)


def test_messages_split_and_error_text_is_read():
    first = nl.route_delete(nl.Route("10.244.2.0/24", ""))
    text = b"Nexthop has invalid gateway\0"
    tlv = struct.pack("=HH", 4 + len(text), NLMSGERR_ATTR_MSG) + text + b"\0" * (-len(text) % 4)
    body = struct.pack("=i", -101) + first[:16] + tlv
    err = struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, 0x100 | NLM_F_ACK_TLVS, 9, 0) + body
    msgs = list(iter_messages(first + err))
    assert [m[0] for m in msgs] == [nl.RTM_DELROUTE, NLMSG_ERROR]
    _type, flags, seq, off, end = msgs[1]
    assert seq == 9 and parse_error(first + err, off, end, flags) == (101, "Nexthop has invalid gateway")


def test_batch_names_the_failed_request_across_a_sequence_wrap():
    kernel = FakeKernel()
    kernel.refuse(errno.ENETUNREACH, nth=2, text="Nexthop has invalid gateway")
    sock = kernel.socket()
    sock.seq = 0xFFFFFFFE  # the second request gets 0xFFFFFFFF, the third 1 (0 is skipped)
    reqs = [nl.route_replace(nl.Route(f"10.244.{i}.0/24", f"10.244.{i}.0", "flannel.1", True), 3)
            for i in range(4)]
    failures = sock.batch(reqs)
    sent = list(iter_messages(kernel.datagrams[0]))
    assert [seq for _t, _f, seq, _o, _e in sent] == [0xFFFFFFFF, 1, 2, 3]
    assert [bool(flags & NLM_F_ACK) for _t, flags, _s, _o, _e in sent] == [False, False, False, True]
    assert [(f.index, f.error.errno, f.error.text) for f in failures] == [
        (2, errno.ENETUNREACH, "Nexthop has invalid gateway")]


def test_batch_splits_into_datagrams_and_counts_positions_across_them():
    kernel = FakeKernel()
    kernel.refuse(errno.EINVAL, nth=4)
    sock = kernel.socket()
    sock.BATCH = 3
    reqs = (nl.neigh_replace(5, f"10.244.{i}.0", "02:aa:bb:cc:dd:03") for i in range(7))
    failures = sock.batch(reqs)
    assert [len(list(iter_messages(d))) for d in kernel.datagrams] == [3, 3, 1]
    assert [(f.index, f.error.errno) for f in failures] == [(4, errno.EINVAL)]


def test_dumps_and_route_lookups_parse_back():
    kernel = FakeKernel(
        routes=[nl.Route("10.244.2.0/24", "10.244.2.0", oif=3, onlink=True), nl.Route("0.0.0.0/0", "192.168.1.1", oif=2),
                nl.Route("fc00::/64", "", oif=3)],
        neighbours=[nl.Neigh("", "10.244.2.0", "02:aa:bb:cc:dd:02", 3), nl.Fdb("", "02:aa:bb:cc:dd:02", "192.168.1.12", 3)])
    sock = kernel.socket()
    assert nl.routes(sock, socket.AF_INET) == [nl.Route("10.244.2.0/24", "10.244.2.0", "", True, 3),
                                               nl.Route("0.0.0.0/0", "192.168.1.1", "", False, 2)]
    assert nl.neighbours(sock, nl.AF_BRIDGE) == [nl.Fdb("", "02:aa:bb:cc:dd:02", "192.168.1.12", 3)]
    found = nl.lookup_routes(sock, ["10.244.2.7", "8.8.8.8"])
    assert (found["10.244.2.7"].oif, found["8.8.8.8"].gateway) == (3, "192.168.1.1")
    kernel.routes = []
    assert nl.lookup_routes(sock, ["10.244.2.7"]) == {"10.244.2.7": None}
