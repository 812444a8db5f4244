"""The pod attachment's requests decode (with pyroute2's parsers) to what was meant, link
answers parse back, and a datagram's answers are matched to its requests."""
from __future__ import annotations

import errno
import ipaddress
import socket

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cni_plugin import attachment
from cni_plugin import netlink as nl
from cni_plugin.netlink.constants import IFA_F_NODAD, NLM_F_ACK, NLM_F_NEW, RT_SCOPE_LINK
from tests.support.fake_kernel import FakeKernel


def decode(msg_class, raw: bytes):
    m = msg_class(raw)
    m.decode()
    return m


def test_fused_veth_create_puts_the_named_peer_into_the_pod_netns():
    m = decode(ifinfmsg, nl.veth_create("veth1", "02:00:00:00:00:01", "eth0", 7, "02:00:00:00:00:02", 1450, 3))
    assert m["header"]["type"] == nl.RTM_NEWLINK
    assert m["header"]["flags"] == NLM_F_NEW
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
    m = decode(ifinfmsg, nl.hairpin_on("veth1"))
    assert m["index"] == 0 and m.get_attr("IFLA_IFNAME") == "veth1"
    info = m.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge"
    assert info.get_attr("IFLA_INFO_SLAVE_DATA").get_attr("IFLA_BRPORT_MODE") == 1


def test_bridge_is_born_up_with_its_mac_and_no_mtu():
    m = decode(ifinfmsg, nl.link_message(nl.Link(0, "cni0", nl.IFF_UP, mac="02:00:00:00:00:09", kind="bridge")))
    assert m["header"]["flags"] == NLM_F_NEW and (m["flags"], m["change"]) == (1, 1)
    assert (m.get_attr("IFLA_IFNAME"), m.get_attr("IFLA_ADDRESS"), m.get_attr("IFLA_MTU")) == (
        "cni0", "02:00:00:00:00:09", None)
    assert m.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") == "bridge"


def test_addresses_and_routes():
    v4 = decode(ifaddrmsg, nl.address_add(5, "10.244.1.5", 24))
    assert (v4["family"], v4["prefixlen"], v4["index"], v4["flags"]) == (socket.AF_INET, 24, 5, 0)
    assert (v4.get_attr("IFA_LOCAL"), v4.get_attr("IFA_BROADCAST")) == ("10.244.1.5", "10.244.1.255")
    v6 = decode(ifaddrmsg, nl.address_add(5, "fc00::5", 64))
    assert (v6["family"], v6["flags"], v6.get_attr("IFA_ADDRESS")) == (socket.AF_INET6, IFA_F_NODAD, "fc00::5")
    default = decode(rtmsg, nl.route_message(nl.Route("0.0.0.0/0", "10.244.1.1", oif=5)))
    assert default["header"]["flags"] == NLM_F_NEW
    assert (default["dst_len"], default["table"], default.get_attr("RTA_DST")) == (0, 254, None)
    assert (default.get_attr("RTA_GATEWAY"), default.get_attr("RTA_OIF")) == ("10.244.1.1", 5)
    direct = decode(rtmsg, nl.route_message(nl.Route("fc00::/16", "", oif=5)))
    assert (direct["family"], direct["dst_len"], direct.get_attr("RTA_DST")) == (socket.AF_INET6, 16, "fc00::")
    assert direct["scope"] == RT_SCOPE_LINK and direct.get_attr("RTA_GATEWAY") is None


def test_link_answer_parses_back():
    link = nl.Link(9, "cni0", nl.IFF_UP, 1450, "02:aa:bb:cc:dd:ee", "veth", master=4, peer_index=12)
    raw = nl.link_message(link, nl.RTM_NEWLINK, 0)
    assert decode(ifinfmsg, raw).get_attr("IFLA_LINK") == 12
    assert nl.parse_link(raw, 16, len(raw)) == link and nl.parse_link(raw, 16, len(raw)).up


def test_request_matches_answers_to_requests_in_order():
    kernel = FakeKernel(links=[nl.Link(2, "eth0")])
    kernel.refuse(errno.EEXIST, nth=1)
    sock = kernel.socket()
    sock.seq = 0xFFFFFFFE  # wraps around in the middle of the datagram
    replies = sock.request([nl.link_get("eth0"), nl.link_delete("x"), nl.link_set(1, up=True)])
    assert [r.code for r in replies] == [0, errno.EEXIST, 0]
    assert nl.parse_link(*replies[0].objects[0]).name == "eth0" and replies[1].objects == []
    assert len(kernel.datagrams) == 1
    sent = kernel.datagrams[0]
    assert all(flags & NLM_F_ACK for _t, flags, _s, _o, _e in nl.iter_messages(sent))
    assert [seq for _t, _f, seq, _o, _e in nl.iter_messages(sent)] == [0xFFFFFFFF, 1, 2]


def test_pod_addresses_and_routes_are_read_per_interface():
    kernel = FakeKernel(
        addresses=[nl.Address(3, socket.AF_INET, "10.244.1.5", 24), nl.Address(4, socket.AF_INET, "10.9.0.1", 16),
                   nl.Address(3, socket.AF_INET6, "fc00::5", 64)],
        routes=[nl.Route("0.0.0.0/0", "10.244.1.1", oif=3), nl.Route("10.244.0.0/16", "10.244.1.1", oif=3),
                nl.Route("10.9.0.0/16", "", oif=4), nl.Route("10.8.0.0/16", "10.244.1.1", oif=3, table=100)])
    sock = kernel.socket()
    assert attachment.link_addresses(sock, 3) == [ipaddress.ip_interface("10.244.1.5/24"),
                                                  ipaddress.ip_interface("fc00::5/64")]
    assert attachment.pod_routes(sock, 3) == [(ipaddress.ip_network("0.0.0.0/0"), "10.244.1.1"),
                                              (ipaddress.ip_network("10.244.0.0/16"), "10.244.1.1")]


def test_an_unexpected_refusal_names_the_step_and_a_missing_link_is_none():
    kernel = FakeKernel(links=[nl.Link(7, "cni0", mtu=1450, kind="bridge")])
    kernel.refuse(errno.EPERM, mtype=nl.RTM_NEWLINK)
    sock = kernel.socket()
    assert attachment.get_link(sock, "nope0") is None
    try:
        attachment.ensure_bridge(sock, "cni0", 1400, [])
    except attachment.NetlinkStepError as e:
        assert "setting MTU 1400 on cni0" in str(e) and "Operation not permitted" in str(e)
    else:
        raise AssertionError("EPERM must raise")
