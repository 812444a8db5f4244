"""The data plane's kernel reads and writes against a fake kernel: dumps become the planner's
objects (ours only, devices named), changes go out as one batch, removals of what is
already gone are fine and other refusals are reported per object."""
from __future__ import annotations

import errno
import ipaddress

from cni_plugin import netlink as nl
from cni_plugin.netlink import Fdb, Neigh, Route
from cni_plugin.netlink.constants import RTM_DELNEIGH, RTM_NEWROUTE
from daemon.dataplane import kernel
from daemon.dataplane.planner import Changes
from tests.support.fake_kernel import FakeKernel

MAC = "02:aa:bb:cc:dd:02"


def devices() -> kernel.Devices:
    return kernel.Devices({"flannel.1": 5, "eth0": 2}, frozenset({"flannel.1"}), "eth0",
                          (ipaddress.ip_network("10.244.0.0/16"),))


def test_read_state_keeps_our_objects_and_names_their_devices():
    fake = FakeKernel(
        neighbours=[Neigh("", "10.244.2.0", MAC, 5), Neigh("", "10.244.3.0", MAC, 5, state=0x02),  # reachable: not ours
                    Neigh("", "192.168.1.1", "02:00:00:00:00:01", 2), Fdb("", MAC, "192.168.1.12", 5),
                    Fdb("", "00:00:00:00:00:00", "192.168.1.13", 5)],
        routes=[Route("10.244.2.0/24", "10.244.2.0", onlink=True, oif=5),
                Route("10.244.4.0/24", "192.168.1.14", oif=2),  # host-gw style, into the cluster network
                Route("0.0.0.0/0", "192.168.1.1", oif=2),  # the default route: not ours
                Route("10.244.5.0/24", "10.244.5.0", oif=5, table=100),  # another table
                Route("192.168.1.0/24", "", oif=2, protocol=nl.RTPROT_KERNEL)])
    state = kernel.read_state(fake.socket(), devices(), ipv4=True, ipv6=False)
    assert state.neighs == {("flannel.1", "10.244.2.0"): Neigh("flannel.1", "10.244.2.0", MAC)}
    assert state.fdbs == [Fdb("flannel.1", MAC, "192.168.1.12")]
    assert state.routes == {"10.244.2.0/24": Route("10.244.2.0/24", "10.244.2.0", "flannel.1", True),
                            "10.244.4.0/24": Route("10.244.4.0/24", "192.168.1.14", "eth0", False)}


def test_apply_sends_one_batch_and_reports_only_real_failures():
    fake = FakeKernel()
    fake.refuse(errno.ENOENT, mtype=RTM_DELNEIGH)  # already gone: fine
    fake.refuse(errno.EINVAL, mtype=RTM_NEWROUTE, text="Invalid gateway")
    bad_route = Route("10.244.7.0/24", "10.244.7.0", "flannel.1", True)
    changes = Changes(set_neighs=[Neigh("flannel.1", "10.244.7.0", MAC)],
                      set_fdbs=[Fdb("flannel.1", MAC, "192.168.1.17")], set_routes=[bad_route],
                      del_neighs=[Neigh("flannel.1", "10.244.9.0", MAC)])
    result = kernel.apply(fake.socket(), changes, devices())
    assert len(fake.datagrams) == 1 and len(fake.requests) == 4
    assert result.applied == 3
    assert [(obj, err.errno, err.text) for obj, err in result.failed] == [(bad_route, errno.EINVAL, "Invalid gateway")]


def test_directly_connected_peers_are_those_routed_on_the_uplink_without_gateway():
    fake = FakeKernel(routes=[Route("192.168.1.0/24", "", oif=2), Route("0.0.0.0/0", "192.168.1.1", oif=2),
                              Route("172.16.0.0/16", "", oif=7)])
    found = kernel.directly_connected(fake.socket(), ["192.168.1.12", "10.1.2.3", "172.16.0.9"], 2)
    assert found == {"192.168.1.12"}
