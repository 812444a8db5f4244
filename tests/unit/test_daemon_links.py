"""daemon/links.py: link and address messages, parsed back as the kernel sends them."""
from __future__ import annotations

import socket

from cni_plugin import rtnl
from daemon import links


class OneShot:
    """Stands in for the socket: records the request, answers with a prepared reply."""

    def __init__(self, reply: rtnl.Reply):
        self.reply, self.sent = reply, []

    def call(self, requests):
        self.sent.extend(requests)
        return [self.reply]


def _payload(request: bytes) -> tuple[bytes, int, int]:
    return request, 16, len(request)


def capture_vxlan(**kw) -> bytes:
    sock = OneShot(rtnl.Reply(0, "", []))
    links.add_vxlan(sock, **kw)
    return sock.sent[0]


def test_vxlan_request_parses_back_to_its_settings():
    req = capture_vxlan(name="flannel.1", vni=7, link=3, local="10.77.0.11", port=8472,
                        learning=False, gbp=True, mac="02:aa:bb:cc:dd:01", mtu=1450)
    link = links.parse_link(*_payload(req))
    assert (link.name, link.mtu, link.mac, link.kind) == ("flannel.1", 1450, "02:aa:bb:cc:dd:01", "vxlan")
    assert link.vxlan == links.Vxlan(vni=7, link=3, local="10.77.0.11", port=8472,
                                     learning=False, gbp=True)


def test_ipv6_vxlan_and_learning():
    req = capture_vxlan(name="flannel-v6.1", vni=1, link=2, local="fd77::11", port=4789,
                        learning=True, gbp=False, mac="02:aa:bb:cc:dd:02", mtu=1430)
    v = links.parse_link(*_payload(req)).vxlan
    assert (v.local, v.port, v.learning, v.gbp) == ("fd77::11", 4789, True, False)


def test_address_request_parses_back():
    sock = OneShot(rtnl.Reply(0, "", []))
    links.add_address(sock, 5, "10.244.3.0", 32)
    a = links.parse_address(*_payload(sock.sent[0]))
    assert a == links.Address(5, socket.AF_INET, "10.244.3.0", 32)


def test_missing_link_is_none_and_other_errors_raise():
    assert links.get_link(OneShot(rtnl.Reply(19, "", [])), name="nope0") is None  # ENODEV
    assert links.get_link(OneShot(rtnl.Reply(0, "", [])), name="x" * 40) is None  # not a name
    try:
        links.get_link(OneShot(rtnl.Reply(1, "denied", [])), index=3)  # EPERM
    except rtnl.NetlinkError as e:
        assert e.errno == 1 and "denied" in str(e)
    else:
        raise AssertionError("EPERM must raise")


def test_vxlan_udp_checksum_is_sent_only_when_asked():
    base = dict(name="flannel.1", vni=1, link=2, local="10.77.0.11", port=8472, learning=False,
                gbp=False, mac="02:aa:bb:cc:dd:03", mtu=1450)
    assert links.parse_link(*_payload(capture_vxlan(**base))).vxlan.udp_csum is None
    for want in (False, True):
        req = capture_vxlan(**base, udp_csum=want)
        assert links.parse_link(*_payload(req)).vxlan.udp_csum is want
