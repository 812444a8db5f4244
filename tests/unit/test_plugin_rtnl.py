"""The plugin's hand-packed rtnetlink: requests decode (with pyroute2's parsers) to what was
meant, replies are matched to requests, and link/address/route answers parse back."""
from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni_plugin import links, rtnl


def decode(msg_class, raw: bytes):
    m = msg_class(raw)
    m.decode()
    return m


def test_fused_veth_create_puts_the_named_peer_into_the_pod_netns():
    m = decode(ifinfmsg, links._veth_create("veth1", "02:00:00:00:00:01", "eth0", 7, "02:00:00:00:00:02", 1450, 3))
    assert m["header"]["type"] == rtnl.RTM_NEWLINK
    assert m["header"]["flags"] == rtnl.F_REQUEST | rtnl.F_CREATE | rtnl.F_EXCL
    assert (m["flags"], m["change"]) == (1, 1)  # host end up
    assert (m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_MTU"), m.get_attr("IFLA_MASTER")) == ("veth1", 1450, 3)
    assert m.get_attr("IFLA_ADDRESS") == "02:00:00:00:00:01"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert (peer.get_attr("IFLA_IFNAME"), peer.get_attr("IFLA_NET_NS_FD"), peer.get_attr("IFLA_MTU")) == ("eth0", 7, 1450)
    assert peer.get_attr("IFLA_ADDRESS") == "02:00:00:00:00:02"
    assert peer["flags"] == 0  # a veth end cannot be born up before its pair exists


def test_hairpin_is_set_on_the_bridge_port_by_name():
    m = decode(ifinfmsg, links._hairpin_on("veth1"))
    assert m["index"] == 0 and m.get_attr("IFLA_IFNAME") == "veth1"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge"
    assert info.get_attr("IFLA_INFO_SLAVE_DATA").get_attr("IFLA_BRPORT_MODE") == 1


def test_addresses_and_routes():
    v4 = decode(ifaddrmsg, links._addr_add(5, ipaddress.ip_interface("10.244.1.5/24")))
    assert (v4["family"], v4["prefixlen"], v4["index"], v4["flags"]) == (socket.AF_INET, 24, 5, 0)
    assert (v4.get_attr("IFA_LOCAL"), v4.get_attr("IFA_BROADCAST")) == ("10.244.1.5", "10.244.1.255")
    v6 = decode(ifaddrmsg, links._addr_add(5, ipaddress.ip_interface("fc00::5/64")))
    assert (v6["family"], v6["flags"], v6.get_attr("IFA_ADDRESS")) == (socket.AF_INET6, links.IFA_F_NODAD, "fc00::5")
    default = decode(rtmsg, links._route_add(5, ipaddress.ip_network("0.0.0.0/0"), "10.244.1.1"))
    assert default["header"]["flags"] == rtnl.F_REQUEST | rtnl.F_CREATE | rtnl.F_EXCL
    assert (default["dst_len"], default["table"], default.get_attr("RTA_DST")) == (0, 254, None)
    assert (default.get_attr("RTA_GATEWAY"), default.get_attr("RTA_OIF")) == ("10.244.1.1", 5)
    direct = decode(rtmsg, links._route_add(5, ipaddress.ip_network("fc00::/16"), ""))
    assert (direct["family"], direct["dst_len"], direct.get_attr("RTA_DST")) == (socket.AF_INET6, 16, "fc00::")
    assert direct["scope"] == links.RT_SCOPE_LINK and direct.get_attr("RTA_GATEWAY") is None


def test_link_answer_parses_back():
    body = (rtnl.IFINFO.pack(0, 1, 9, 1, 0) + rtnl.attr_str(links.IFLA_IFNAME, "cni0")
            + rtnl.attr(links.IFLA_ADDRESS, bytes.fromhex("02aabbccddee")) + rtnl.attr_u32(links.IFLA_MTU, 1450)
            + rtnl.attr_u32(links.IFLA_MASTER, 4) + rtnl.attr_u32(links.IFLA_LINK, 12)
            + rtnl.nested(links.IFLA_LINKINFO, rtnl.attr_str(links.IFLA_INFO_KIND, "veth")))
    raw = rtnl.message(rtnl.RTM_NEWLINK, 0, body)
    assert links._parse_link(raw, 16, len(raw)) == links.LinkInfo(
        index=9, name="cni0", mac="02:aa:bb:cc:dd:ee", kind="veth", master=4, peer_index=12, mtu=1450, up=True)


class FakeKernel:
    """Answers `call`'s datagram like the kernel: an object for a GET, then one ACK or error each."""

    def __init__(self, answers):
        self.answers, self.sent, self.out = answers, [], []

    def send(self, buf):
        self.sent.append(bytes(buf))
        reply = b""
        for (mtype, flags, seq, off, end), (objects, code) in zip(rtnl.iter_messages(buf), self.answers):
            for obj in objects:
                reply += struct.pack("=IHHII", 16 + len(obj), rtnl.RTM_NEWLINK, 0, seq, 0) + obj
            err = struct.pack("=i", -code) + bytes(buf[off - 16:off])
            reply += struct.pack("=IHHII", 16 + len(err), rtnl.NLMSG_ERROR, 0x100, seq, 0) + err
        self.out.append(reply)

    def recv(self, _size):
        return self.out.pop(0)


def test_call_matches_answers_to_requests_in_order():
    sock = rtnl.RtnlSocket.__new__(rtnl.RtnlSocket)
    sock.seq = 0xFFFFFFFE  # wraps around in the middle of the datagram
    link = rtnl.IFINFO.pack(0, 1, 2, 0, 0) + rtnl.attr_str(links.IFLA_IFNAME, "eth0")
    sock.sock = FakeKernel([([link], 0), ([], errno.EEXIST), ([], 0)])
    replies = sock.call([links._link_get("eth0"), links._link_del("x"), links._link_set(1, up=True)])
    assert [r.code for r in replies] == [0, errno.EEXIST, 0]
    assert links._parse_link(*replies[0].objects[0]).name == "eth0" and replies[1].objects == []
    sent = sock.sock.sent[0]
    assert all(flags & rtnl.F_ACK for _t, flags, _s, _o, _e in rtnl.iter_messages(sent))
    assert [seq for _t, _f, seq, _o, _e in rtnl.iter_messages(sent)] == [0xFFFFFFFF, 1, 2]
