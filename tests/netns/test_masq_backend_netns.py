"""The masquerade rules land in the iptables backend the node already uses (real
iptables-legacy and iptables-nft, inside a test namespace only)."""
from __future__ import annotations

import pytest

from tests.netns.test_masq_netns import masq_call, worker  # noqa: F401 (fixture)
from tests.support.flanneletted import VXLAN_CONFIG, underlay, wait_for  # noqa: F401 (fixture)

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

OURS = ("FLANNEL-FWD", "FLANNEL-POSTRTG")
ETCD_CONFIG = VXLAN_CONFIG  # what the `underlay` fixture puts in etcd


def masq_with_mode(state, mode, method):
    from daemon.dataplane.masquerade import Masquerade

    if "masq" not in state:
        state["masq"] = Masquerade("10.244.0.0/16", "10.244.3.0/24", "fc00::/48",
                                   "fc00:0:0:3::/64", iptables_mode=mode)
    return getattr(state["masq"], method)()


def backend_of(state):
    return state["masq"].backend


def skip_unless_legacy_works(ns):
    probe = ns.run("iptables-legacy", "-w", "-L", "-n", check=False)
    if probe.returncode != 0:
        pytest.skip("iptables-legacy does not work in a netns on this kernel: "
                    + probe.stderr.decode().strip())


@pytest.fixture
def legacy_works(netns):
    skip_unless_legacy_works(netns)


def saved(netns, tool):
    """Both families' save output of one variant, e.g. tool="legacy"."""
    return netns.out(f"iptables-{tool}-save") + netns.out(f"ip6tables-{tool}-save")


def remove_everything(netns, worker):
    """Undo what the test added (the namespace goes away too; this is belt and braces)."""
    worker.call(masq_call, "remove")
    for tool in ("iptables-legacy", "iptables-nft"):
        netns.run(tool, "-w", "-P", "FORWARD", "ACCEPT", check=False)
        netns.run(tool, "-w", "-t", "mangle", "-X", "KUBE-IPTABLES-HINT", check=False)
        netns.run(tool, "-w", "-t", "filter", "-F", "DOCKER-USER", check=False)
        netns.run(tool, "-w", "-t", "filter", "-X", "DOCKER-USER", check=False)


@pytest.mark.parametrize("kubelet,other", [("legacy", "nft"), ("nft", "legacy")])
def test_our_rules_follow_kubelet_hint(netns, worker, legacy_works, kubelet, other):
    netns.run(f"iptables-{kubelet}", "-w", "-P", "FORWARD", "DROP")
    netns.run(f"iptables-{kubelet}", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    # more rules in the other backend: the kubelet hint still decides
    netns.run(f"iptables-{other}", "-w", "-N", "DOCKER-USER")
    for port in ("22", "80", "443"):
        netns.run(f"iptables-{other}", "-w", "-A", "DOCKER-USER", "-p", "tcp", "--dport", port,
                  "-j", "RETURN")
    try:
        assert worker.call(masq_with_mode, "auto", "check") is False
        worker.call(masq_with_mode, "auto", "ensure")
        assert worker.call(backend_of) == kubelet
        assert worker.call(masq_with_mode, "auto", "check") is True
        ours, theirs = saved(netns, kubelet), saved(netns, other)
        assert ":FORWARD DROP" in ours
        assert "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD" in ours
        assert "-A FLANNEL-FWD -s 10.244.0.0/16" in ours and "-A FLANNEL-FWD -d fc00::/48" in ours
        assert "-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16" in ours
        assert "-A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00:0:0:3::/64" in ours
        assert not any(chain in theirs for chain in OURS)
    finally:
        remove_everything(netns, worker)
    assert not any(chain in saved(netns, kubelet) for chain in OURS)


def test_legacy_rules_without_a_hint_win_by_count(netns, worker, legacy_works):
    netns.run("iptables-legacy", "-w", "-P", "FORWARD", "DROP")
    netns.run("iptables-legacy", "-w", "-N", "DOCKER-USER")
    netns.run("iptables-legacy", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
    try:
        worker.call(masq_with_mode, "auto", "ensure")
        assert worker.call(backend_of) == "legacy"
        assert "-A FLANNEL-FWD" in saved(netns, "legacy")
        assert "FLANNEL-FWD" not in saved(netns, "nft")
    finally:
        remove_everything(netns, worker)


def test_explicit_legacy_on_an_empty_node(netns, worker, legacy_works):
    try:
        worker.call(masq_with_mode, "legacy", "ensure")
        assert worker.call(masq_with_mode, "legacy", "check") is True
        assert "-A FLANNEL-POSTRTG" in saved(netns, "legacy")
        assert "FLANNEL-POSTRTG" not in saved(netns, "nft")
    finally:
        remove_everything(netns, worker)


@pytest.mark.timeout(120)
def test_daemon_on_a_legacy_kubelet_node_installs_and_repairs_in_legacy(underlay):
    node = underlay.node()
    skip_unless_legacy_works(node.ns)
    node.ns.run("iptables-legacy", "-w", "-P", "FORWARD", "DROP")
    node.ns.run("iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    try:
        _legacy_daemon_checks(node)
    finally:
        node.stop()  # then empty every legacy table this test or the daemon wrote to
        node.ns.run("iptables-legacy", "-w", "-P", "FORWARD", "ACCEPT", check=False)
        for table in ("mangle", "nat", "filter"):
            node.ns.run("iptables-legacy", "-w", "-t", table, "-F", check=False)
            node.ns.run("iptables-legacy", "-w", "-t", table, "-X", check=False)
    assert saved(node.ns, "legacy").count("\n-") == 0


def _legacy_daemon_checks(node):
    node.start("--ip-masq")
    env = node.wait_ready()
    assert "iptables backend=legacy mode=auto kubelet_hint=True" in node.log()
    rule = f"-A FLANNEL-POSTRTG -s {env.subnet.network} -d 10.244.0.0/16"
    assert rule in node.ns.out("iptables-legacy-save", "-t", "nat")
    assert "-j FLANNEL-FWD" in node.ns.out("iptables-legacy-save", "-t", "filter")
    assert not any(chain in saved(node.ns, "nft") for chain in OURS)
    node.ns.run("iptables-legacy", "-w", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    wait_for("the legacy rules back", lambda: rule in node.ns.out("iptables-legacy-save", "-t", "nat"),
             timeout=10, node=node)
    assert not any(chain in saved(node.ns, "nft") for chain in OURS)
