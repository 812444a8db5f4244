"""Link and address requests of the daemon's devices, parsed back as the kernel sends them."""
from __future__ import annotations

import errno
import socket

from cni_plugin import netlink as nl
from cni_plugin.netlink.constants import RTM_GETLINK, RTM_NEWADDR
from tests.support.fake_kernel import FakeKernel


def _payload(request: bytes) -> tuple[bytes, int, int]:
    return request, 16, len(request)


def capture_vxlan(name: str, vxlan: nl.Vxlan, mac: str, mtu: int) -> bytes:
    kernel = FakeKernel()
    nl.add_link(kernel.socket(), nl.Link(0, name, mtu=mtu, mac=mac, kind="vxlan", vxlan=vxlan))
    return kernel.sent(nl.RTM_NEWLINK)[0]


def test_vxlan_request_parses_back_to_its_settings():
    want = nl.Vxlan(vni=7, link=3, local="10.77.0.11", port=8472, learning=False, gbp=True)
    link = nl.parse_link(*_payload(capture_vxlan("flannel.1", want, "02:aa:bb:cc:dd:01", 1450)))
    assert (link.name, link.mtu, link.mac, link.kind) == ("flannel.1", 1450, "02:aa:bb:cc:dd:01", "vxlan")
    assert link.vxlan == want and not link.up


def test_ipv6_vxlan_and_learning():
    want = nl.Vxlan(vni=1, link=2, local="fd77::11", port=4789, learning=True, gbp=False)
    v = nl.parse_link(*_payload(capture_vxlan("flannel-v6.1", want, "02:aa:bb:cc:dd:02", 1430))).vxlan
    assert (v.local, v.port, v.learning, v.gbp) == ("fd77::11", 4789, True, False)


def test_address_request_parses_back():
    kernel = FakeKernel()
    nl.add_address(kernel.socket(), 5, "10.244.3.0", 32)
    a = nl.parse_address(*_payload(kernel.sent(RTM_NEWADDR)[0]))
    assert a == nl.Address(5, socket.AF_INET, "10.244.3.0", 32)


def test_missing_link_is_none_and_other_errors_raise():
    kernel = FakeKernel(links=[nl.Link(3, "eth0")])
    sock = kernel.socket()
    assert nl.get_link(sock, name="nope0") is None  # ENODEV
    assert nl.get_link(sock, name="x" * 40) is None  # not a name: nothing is asked
    assert len(kernel.requests) == 1
    assert nl.get_link(sock, index=3).name == "eth0"
    kernel.refuse(errno.EPERM, mtype=RTM_GETLINK, text="denied")
    try:
        nl.get_link(sock, index=3)
    except nl.NetlinkError as e:
        assert e.errno == errno.EPERM and e.text == "denied" and "denied" in str(e)
    else:
        raise AssertionError("EPERM must raise")


def test_vxlan_udp_checksum_is_sent_only_when_asked():
    base = nl.Vxlan(vni=1, link=2, local="10.77.0.11", port=8472, learning=False, gbp=False)
    assert nl.parse_link(*_payload(capture_vxlan("flannel.1", base, "02:aa:bb:cc:dd:03", 1450))).vxlan.udp_csum is None
    for want in (False, True):
        req = capture_vxlan("flannel.1", base._replace(udp_csum=want), "02:aa:bb:cc:dd:03", 1450)
        assert nl.parse_link(*_payload(req)).vxlan.udp_csum is want
