"""vxlan backend in netns nodes: exact kernel entries, traffic, repair, stable VTEP MAC."""
from __future__ import annotations

import json

import pytest

from conf.flannel import Lease
from tests.e2e.capture import Capture
from tests.support.dataplane_nodes import (backend_call, lines, make_backend, ping,
                                           programmed, reconcile, start_nodes, start_watch,
                                           underlay,  # noqa: F401 (fixture)
                                           wait_woken)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}


@pytest.fixture
def three(underlay, tmp_path):
    nodes = start_nodes(underlay, ["br0"] * 3, VXLAN, str(tmp_path))
    for node in nodes:
        reconcile(node, nodes)
    return nodes


def mac(node) -> str:
    return node.lease.attrs.backend_data["VtepMAC"]


def expected(node, peers):
    """The exact neighbour / FDB / route lines flannel's vxlan backend would leave."""
    others = [p for p in peers if p is not node]
    return ({f"{p.lease.subnet.network_address} lladdr {mac(p)} PERMANENT" for p in others},
            {f"{mac(p)} dst {p.ip} self permanent" for p in others},
            {f"{p.lease.subnet} via {p.lease.subnet.network_address} onlink" for p in others})


def actual(node):
    return (lines(node, "ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent"),
            lines(node, "bridge", "fdb", "show", "dev", "flannel.1"),
            lines(node, "ip", "route", "show", "dev", "flannel.1"))


def test_device_and_exact_entries(three):
    a = three[0]
    link = a.ns.out("ip", "-d", "link", "show", "flannel.1")
    assert "vxlan id 1 local 192.168.50.10 dev eth0" in link
    assert "dstport 8472" in link and "nolearning" in link and "mtu 1450" in link
    assert f"link/ether {mac(a)}" in link
    assert "inet 10.244.1.0/32" in a.ns.out("ip", "-4", "addr", "show", "dev", "flannel.1")
    assert a.lease.attrs.backend_type == "vxlan" and a.lease.attrs.backend_data["VNI"] == 1
    for node in three:
        assert actual(node) == expected(node, three)
    assert len({mac(n) for n in three}) == 3


def test_pods_reach_each_other_over_vxlan(three):
    a, b, c = three
    assert ping(a, "10.244.1.1", "10.244.2.1")
    assert ping(c, "10.244.3.1", "10.244.1.1")


def test_second_reconcile_changes_nothing(three):
    stats = reconcile(three[0], three)
    assert (stats.wanted, stats.unchanged, stats.set, stats.removed, stats.errors) == (6, 6, 0, 0, 0)
    assert three[0].worker.call(programmed, [n.lease for n in three[1:]]) == [True, True]


def test_hand_deleted_entries_come_back(three):
    a, b, c = three
    a.ns.run("ip", "route", "del", "10.244.2.0/24")
    a.ns.run("bridge", "fdb", "del", mac(c), "dev", "flannel.1", "dst", c.ip)
    a.ns.run("ip", "neigh", "del", "10.244.3.0", "dev", "flannel.1")
    assert actual(a) != expected(a, three)
    stats = reconcile(a, three)
    assert stats.set == 3 and stats.errors == 0
    assert actual(a) == expected(a, three)
    assert ping(a, "10.244.1.1", "10.244.3.1")


def test_deleted_device_is_recreated_with_the_same_mac(three):
    a = three[0]
    a.ns.run("ip", "link", "del", "flannel.1")
    stats = reconcile(a, three)
    assert stats.recreated == ["flannel.1"] and stats.set == 6
    assert f"link/ether {mac(a)}" in a.ns.out("ip", "link", "show", "flannel.1")
    assert "inet 10.244.1.0/32" in a.ns.out("ip", "-4", "addr", "show", "dev", "flannel.1")
    assert actual(a) == expected(a, three)
    assert ping(three[1], "10.244.2.1", "10.244.1.1")


def test_gone_lease_loses_its_entries(three):
    a, b, c = three
    stats = reconcile(a, [a, b])
    assert stats.removed == 3
    assert actual(a) == expected(a, [a, b])


def test_peer_reboot_with_new_mac_drops_the_stale_fdb(three):
    a, b, c = three
    data = dict(c.lease.attrs.backend_data, VtepMAC="02:aa:bb:cc:dd:03")
    c.lease = Lease(subnet=c.lease.subnet, attrs=c.lease.attrs.model_copy(update={"backend_data": data}))
    reconcile(a, three)
    assert actual(a) == expected(a, three)
    assert "02:aa:bb:cc:dd:03 dst 192.168.50.12 self permanent" in actual(a)[1]


def test_restart_keeps_the_mac_and_the_entries(three, tmp_path):
    a = three[0]
    a.worker.close()
    w = a.start_worker()
    w.call(make_backend, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}', "eth0",
           str(tmp_path / "node1"))
    assert w.call(backend_call, "prepare").backend_data["VtepMAC"] == mac(a)
    stats = reconcile(a, three)
    assert stats.set == 0 and stats.unchanged == 6 and not stats.recreated
    (tmp_path / "node1" / "flannel.1.mac").unlink()  # state lost too (reboot, tmpfs)
    w.call(make_backend, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}', "eth0",
           str(tmp_path / "node1"))
    assert w.call(backend_call, "prepare").backend_data["VtepMAC"] == mac(a)


def test_incompatible_device_is_replaced(underlay, tmp_path):
    node = underlay.add_node()
    node.ns.run("ip", "link", "add", "flannel.1", "type", "vxlan", "id", "7", "dstport", "4789",
                "dev", "eth0")
    w = node.start_worker()
    w.call(make_backend, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}', "eth0",
           str(tmp_path))
    w.call(backend_call, "prepare")
    link = node.ns.out("ip", "-d", "link", "show", "flannel.1")
    assert "vxlan id 1 local 192.168.50.10 dev eth0" in link and "dstport 8472" in link


def test_configured_port_mtu_and_vni(underlay, tmp_path):
    node = underlay.add_node(mtu=9000)
    w = node.start_worker()
    mtu = w.call(make_backend, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4, "Port": 4789}}',
                 "eth0", str(tmp_path))
    attrs = w.call(backend_call, "prepare")
    link = node.ns.out("ip", "-d", "link", "show", "flannel.4")
    assert mtu == 8950 and "mtu 8950" in link
    assert "vxlan id 4" in link and "dstport 4789" in link and attrs.backend_data["VNI"] == 4


def test_kernel_watch_wakes_on_foreign_changes_only(three):
    a, b, c = three
    a.worker.call(start_watch)
    reconcile(a, [a, b])  # our own removals must not wake the loop
    assert not a.worker.call(wait_woken, 1.0)
    a.ns.run("ip", "route", "del", "10.244.2.0/24")
    assert a.worker.call(wait_woken, 5.0)
    reconcile(a, [a, b])
    assert not a.worker.call(wait_woken, 1.0)
    a.ns.run("ip", "link", "del", "flannel.1")
    assert a.worker.call(wait_woken, 5.0)
    assert reconcile(a, [a, b]).recreated == ["flannel.1"]
    assert actual(a) == expected(a, [a, b])
    a.worker.call(wait_woken, 1.0)  # the recreation's own events
    a.ns.run("ip", "link", "set", "flannel.1", "down")
    assert a.worker.call(wait_woken, 5.0)
    reconcile(a, [a, b])
    assert "UP" in a.ns.out("ip", "link", "show", "flannel.1").split(">")[0]
    assert ping(a, "10.244.1.1", "10.244.2.1")


def test_compatible_device_is_kept_and_gets_the_stable_mac(underlay, tmp_path):
    node = underlay.add_node()
    node.ns.run("ip", "link", "add", "flannel.1", "address", "02:de:ad:be:ef:01", "type", "vxlan",
                "id", "1", "local", "192.168.50.10", "dev", "eth0", "dstport", "8472", "nolearning")
    node.ns.run("ip", "link", "set", "flannel.1", "up")
    index = node.ns.out("cat", "/sys/class/net/flannel.1/ifindex")
    w = node.start_worker()
    w.call(make_backend, '{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}', "eth0",
           str(tmp_path))
    attrs = w.call(backend_call, "prepare")
    assert node.ns.out("cat", "/sys/class/net/flannel.1/ifindex") == index  # reused, not recreated
    assert attrs.backend_data["VtepMAC"] != "02:de:ad:be:ef:01"
    assert f"link/ether {attrs.backend_data['VtepMAC']}" in node.ns.out("ip", "link", "show", "flannel.1")


def test_a_run_for_lease_changes_alone_trusts_the_last_run_only_while_the_watch_lives(three):
    a, b, c = three
    leases = [n.lease for n in three]
    # no kernel watch: a hand-deleted route is found even when the run is for leases alone
    a.ns.run("ip", "route", "del", "10.244.2.0/24")
    stats = a.worker.call(backend_call, "reconcile", a.lease, leases, False)
    assert stats.set == 1 and actual(a) == expected(a, three)
    a.worker.call(start_watch)
    # with the watch: a lease change alone is applied against what the last run left
    stats = a.worker.call(backend_call, "reconcile", a.lease, leases[:2], False)
    assert stats.removed == 3 and actual(a) == expected(a, [a, b])
    stats = a.worker.call(backend_call, "reconcile", a.lease, leases, False)
    assert stats.set == 3 and actual(a) == expected(a, three)
    # a foreign change wakes the loop, whose full run (read_kernel) repairs it
    a.ns.run("ip", "neigh", "del", "10.244.3.0", "dev", "flannel.1")
    assert a.worker.call(wait_woken, 5.0)
    assert reconcile(a, three).set == 1 and actual(a) == expected(a, three)
    # so does a deleted device: the full run recreates it and puts every entry back
    a.ns.run("ip", "link", "del", "flannel.1")
    assert a.worker.call(wait_woken, 5.0)
    assert reconcile(a, three).recreated == ["flannel.1"] and actual(a) == expected(a, three)
    # after it, a run for lease changes alone has nothing to do
    stats = a.worker.call(backend_call, "reconcile", a.lease, leases, False)
    assert stats.set == 0 and stats.unchanged == 6


VXLAN_NO_CSUM = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "UDPChecksum": False}}


def _outer_checksums(underlay, a, b) -> set[int]:
    """The outer UDP checksum fields of the VXLAN frames a ping from a's pod range to b's puts
    on the underlay bridge."""
    with Capture(underlay.ns, "br0") as cap:
        assert ping(a, str(a.lease.subnet.network_address + 1), str(b.lease.subnet.network_address + 1))
    return {p.udp_csum for p in cap.packets() if p.is_vxlan}


def test_udp_checksum_off_creates_the_vtep_without_outer_checksums(underlay, tmp_path):
    a, b = start_nodes(underlay, ["br0"] * 2, VXLAN_NO_CSUM, str(tmp_path))
    for node in (a, b):
        reconcile(node, [a, b])
        assert " noudpcsum " in node.ns.out("ip", "-d", "link", "show", "flannel.1")
    assert _outer_checksums(underlay, a, b) == {0}


def test_default_vtep_keeps_the_kernels_outer_checksums(three, underlay):
    a, b, _ = three
    assert " udpcsum " in a.ns.out("ip", "-d", "link", "show", "flannel.1")
    sums = _outer_checksums(underlay, a, b)
    assert sums and 0 not in sums


def test_changing_udp_checksum_recreates_the_vtep_and_absent_keeps_it(three, tmp_path):
    a = three[0]
    index = a.ns.out("cat", "/sys/class/net/flannel.1/ifindex")
    w = a.worker
    w.call(make_backend, json.dumps(VXLAN_NO_CSUM), "eth0", str(tmp_path / "node1"))
    w.call(backend_call, "prepare")
    stats = reconcile(a, three)
    assert " noudpcsum " in a.ns.out("ip", "-d", "link", "show", "flannel.1")
    assert a.ns.out("cat", "/sys/class/net/flannel.1/ifindex") != index
    assert stats.errors == 0 and actual(a) == expected(a, three)
    assert ping(a, "10.244.1.1", "10.244.2.1")
    # Without the option the daemon leaves the checksum setting alone: no recreation.
    index = a.ns.out("cat", "/sys/class/net/flannel.1/ifindex")
    w.call(make_backend, json.dumps(VXLAN), "eth0", str(tmp_path / "node1"))
    w.call(backend_call, "prepare")
    stats = reconcile(a, three)
    assert not stats.recreated and stats.set == 0
    assert a.ns.out("cat", "/sys/class/net/flannel.1/ifindex") == index
