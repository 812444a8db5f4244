"""flanneletted's --iface-regex and --iface-can-reach on a node with three uplinks.

    node netns                                  peer netns
      eth0  10.77.0.11/24  (underlay, etcd, default route via 10.77.0.254)
      eth1  10.88.1.2/24  ----------------------  up1 10.88.1.1/24
      ens5  10.99.2.2/24, 10.99.3.2/24  ---------  up2 10.99.2.1/24
    routes: 172.30.0.0/16 via 10.99.2.1 dev ens5 src 10.99.3.2
            unreachable 203.0.113.0/24
            rule: to 198.51.100.0/24 lookup table 100 (default via 10.88.1.1 dev eth1)

The policy rule makes a dump of the main table point at eth0 for 198.51.100.x while the
kernel's own lookup says eth1: only a real route lookup picks eth1. Alloc backend: the
lease's PublicIP shows the address chosen.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.support.flanneletted import (ALLOC_CONFIG, SUBNETS, DaemonNode, Underlay,
                                         underlay)  # noqa: F401 (fixture)
from tests.support.netns import NetNS, link_netns

pytestmark = pytest.mark.timeout(120)

ETCD_CONFIG = ALLOC_CONFIG  # what the `underlay` fixture puts in etcd


class UplinkNode(DaemonNode):
    """A daemon node started without the harness's `--iface eth0`, with eth1 and ens5 added."""

    def __init__(self, u: Underlay):
        super().__init__(u, len(u.nodes) + 1)
        u.nodes.append(self)
        self.peer = NetNS()
        link_netns(self.ns, self.peer, "eth1", "up1")
        link_netns(self.ns, self.peer, "ens5", "up2")
        for ns, cmd in ((self.ns, "addr add 10.88.1.2/24 dev eth1"),
                        (self.ns, "addr add 10.99.2.2/24 dev ens5"),
                        (self.ns, "addr add 10.99.3.2/24 dev ens5"),
                        (self.peer, "addr add 10.88.1.1/24 dev up1"),
                        (self.peer, "addr add 10.99.2.1/24 dev up2"),
                        (self.ns, "route add 172.30.0.0/16 via 10.99.2.1 dev ens5 src 10.99.3.2"),
                        (self.ns, "route add unreachable 203.0.113.0/24"),
                        (self.ns, "route add default via 10.88.1.1 dev eth1 table 100"),
                        (self.ns, "rule add to 198.51.100.0/24 lookup 100")):
            ns.run("ip", *cmd.split())

    def argv(self, *extra: str) -> list[str]:
        argv = super().argv(*extra)
        at = argv.index("--iface")
        return argv[:at] + argv[at + 2:]

    def close(self) -> None:
        super().close()
        self.peer.close()


@pytest.fixture
def node(request) -> UplinkNode:
    """On the `underlay` fixture, which removes it with the rest."""
    return UplinkNode(request.getfixturevalue("underlay"))


def chosen(node: UplinkNode, *flags: str) -> tuple[str, str]:
    """(interface the daemon logged, PublicIP of its lease in etcd)."""
    node.start(*flags).wait_ready()
    found = re.search(r"msg=\"using interface\" iface=(\S+)", node.log())
    assert found, node.log()
    held = [json.loads(v) for v in node.underlay.etcd.get_prefix(SUBNETS).values()]
    assert len(held) == 1, held
    return found.group(1), held[0]["PublicIP"]


@pytest.mark.parametrize("flags,iface,public_ip", [
    (["--iface-regex", r"^10\.88\."], "eth1", "10.88.1.2"),
    (["--iface-regex", r"10\.99\.3"], "ens5", "10.99.3.2"),  # the matched, second address
    (["--iface-regex", "^ens"], "ens5", "10.99.2.2"),  # no address matches: names, first address
    (["--iface-regex", "^wlan", "--iface-regex", "eth1"], "eth1", "10.88.1.2"),
    (["--iface-regex", r"^10\.(88|99)\.[0-9]{1,3}\.2$"], "eth1", "10.88.1.2"),  # interface order
    (["--iface", "eth0", "--iface-regex", "^10\\.88"], "eth0", "10.77.0.11"),
    (["--iface", "eth7", "--iface-regex", "^10\\.88"], "eth1", "10.88.1.2"),  # as flanneld
    (["--iface-can-reach", "172.30.5.5"], "ens5", "10.99.3.2"),  # the route's source address
    (["--iface-can-reach", "10.88.1.1"], "eth1", "10.88.1.2"),
    (["--iface-can-reach", "198.51.100.7"], "eth1", "10.88.1.2"),  # only a real lookup sees it
    (["--iface-regex", "^ens", "--iface-can-reach", "10.88.1.1"], "ens5", "10.99.2.2"),
    (["--iface-can-reach", "10.88.1.1", "--public-ip", "192.0.2.9"], "eth1", "192.0.2.9"),
])
def test_the_flag_picks_the_interface_and_the_lease_advertises_its_address(node, flags, iface,
                                                                           public_ip):
    assert chosen(node, *flags) == (iface, public_ip)


def test_environment_variables_select_too(node, monkeypatch):
    monkeypatch.setenv("FLANNELD_IFACE_REGEX", r"^nomatch,10\.99\.3\.")
    assert chosen(node) == ("ens5", "10.99.3.2")


def failure(node: UplinkNode, *flags: str) -> tuple[int, str]:
    code = node.start(*flags).wait_exit()
    text = node.log()
    assert "Traceback" not in text, text
    return code, "\n".join(line for line in text.splitlines() if line.startswith("flanneletted:"))


def test_a_bad_regex_is_a_settings_error_naming_the_flag(node):
    code, line = failure(node, "--iface-regex", "^eth[0-")
    assert code == 2 and line.startswith("flanneletted: --iface-regex: '^eth[0-' is not a valid")


def test_no_match_is_fatal_and_lists_what_was_tried(node):
    code, line = failure(node, "--iface-regex", "^wlan", "--iface-regex", r"^172\.",
                         "--iface-can-reach", "203.0.113.9")
    assert code == 1 and line.startswith("flanneletted: no interface found: "), line
    assert "--iface-regex ^wlan: matches no address or name" in line
    assert "--iface-regex ^172\\.: matches no" in line
    assert "eth1 [10.88.1.2" in line and "ens5 [10.99.2.2 10.99.3.2" in line
    assert "--iface-can-reach 203.0.113.9: no route to it" in line
    assert node.underlay.etcd.get_prefix(SUBNETS) == {}  # no lease was taken


def test_an_unreachable_target_is_fatal(node):
    code, line = failure(node, "--iface-can-reach", "203.0.113.9")
    assert code == 1 and line == ("flanneletted: --iface-can-reach 203.0.113.9: no route to it "
                                  "(No route to host)")
