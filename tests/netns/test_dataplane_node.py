"""discover_node picks the uplink as flanneld does; make_backend refuses what it cannot do."""
from __future__ import annotations

import pytest

from tests.support.dataplane_nodes import NodeWorker, backend_call, make_backend

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def discover(state, *args):
    from daemon.dataplane.backend import DataplaneError
    from daemon.dataplane.node import discover_node

    try:
        return discover_node(*args)
    except DataplaneError as e:
        return f"error: {e}"


def backend_for(state, netconf_json, *args):
    from conf.flannel import load_network_config
    from daemon.dataplane.backend import DataplaneError
    from daemon.dataplane.backends import make_backend
    from daemon.dataplane.node import discover_node

    try:
        make_backend(load_network_config(netconf_json), discover_node(*args), "")
        return "ok"
    except DataplaneError as e:
        return f"error: {e}"


@pytest.fixture
def node(netns):
    for name, addr in (("up0", "192.168.70.2/24"), ("up1", "192.168.71.2/24")):
        netns.run("ip", "link", "add", name, "type", "bridge")
        netns.run("ip", "addr", "add", addr, "dev", name)
        netns.run("ip", "link", "set", name, "mtu", "1400" if name == "up1" else "1500")
        netns.run("ip", "link", "set", name, "up")
    netns.run("ip", "route", "add", "default", "via", "192.168.71.1")
    w = NodeWorker(netns)
    try:
        yield w
    finally:
        w.close()


def test_default_route_interface(node):
    info = node.call(discover, None, None, None)
    assert (info.iface, info.public_ip, info.iface_ip, info.iface_mtu) == ("up1", "192.168.71.2", "192.168.71.2", 1400)


def test_named_interface_or_address(node):
    assert node.call(discover, "up0", None, None).public_ip == "192.168.70.2"
    assert node.call(discover, "192.168.70.2", None, None).iface == "up0"


def test_public_ip_picks_its_interface_and_nat_keeps_iface_address(node):
    assert node.call(discover, None, "192.168.70.2", None).iface == "up0"
    behind_nat = node.call(discover, "up0", "203.0.113.9", None)
    assert (behind_nat.public_ip, behind_nat.iface_ip) == ("203.0.113.9", "192.168.70.2")


def test_unknown_interface_is_a_clear_error(node):
    assert node.call(discover, "eth9", None, None) == "error: --iface eth9: no such interface or address in this node"


def test_backend_refusals(node):
    assert "'udp' is not supported" in node.call(backend_for, '{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}', "up0", None, None)
    v6 = '{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}'
    assert "needs an IPv6 address on up0" in node.call(backend_for, v6, "up0", None, None)


def test_ipv6_is_advertised_only_with_enable_ipv6(netns):
    netns.run("ip", "link", "add", "up0", "type", "bridge")
    netns.run("ip", "addr", "add", "192.168.70.2/24", "dev", "up0")
    netns.run("ip", "addr", "add", "fd70::2/64", "dev", "up0", "nodad")
    netns.run("ip", "link", "set", "up0", "up")
    w = NodeWorker(netns)
    try:
        v4 = w.call(make_backend, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}', "up0", "")
        assert v4 == 1450 and w.call(backend_call, "prepare").public_ipv6 is None
        dual = ('{"Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fc00::/48", '
                '"Backend": {"Type": "host-gw"}}')
        w.call(make_backend, dual, "up0", "")
        assert str(w.call(backend_call, "prepare").public_ipv6) == "fd70::2"
    finally:
        w.close()
