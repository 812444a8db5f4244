"""Debian's reference `bridge` plugin with `flannelette-ipam` as its IPAM (root).

Everything runs as a runtime would run it: the bridge executable is started with
the CNI_* env and the config on stdin, and finds `flannelette-ipam` on CNI_PATH.
Its "host" side is a namespace of ours (ip netns exec), never the root namespace.
"""
import ipaddress
import json
import os

import pytest

from ipam.disk_store import DiskStore
from tests.support.cni import invoke, make_cni_path
from tests.support.netns import NetNS, sh

BRIDGE = "/usr/lib/cni/bridge"
SUBNET_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

pytestmark = [pytest.mark.root, pytest.mark.timeout(120),
              pytest.mark.skipif(not os.path.exists(BRIDGE), reason="containernetworking-plugins not installed")]


@pytest.fixture
def world(tmp_path):
    host, pod = NetNS(), NetNS()
    try:
        (tmp_path / "subnet.env").write_text(SUBNET_ENV)
        yield host, pod, tmp_path, make_cni_path(str(tmp_path / "bin"))
    finally:
        pod.close()
        host.close()


def bridge_conf(tmp_path):
    return {"cniVersion": "1.0.0", "name": "fltnet", "type": "bridge", "bridge": "cni0",
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "flannelette-ipam", "subnetFile": str(tmp_path / "subnet.env"),
                     "dataDir": str(tmp_path / "data")}}


def ip_json(ns: NetNS, *args: str):
    return json.loads(ns.out("ip", "-j", *args) or "[]")


def test_bridge_with_flannelette_ipam_sets_up_and_tears_down_a_pod(world):
    host, pod, tmp_path, cni_path = world
    root_links = {link["ifname"] for link in json.loads(sh("ip", "-j", "link").stdout)}
    conf = bridge_conf(tmp_path)

    def run(command, config=conf):
        return invoke(os.path.join(cni_path, "bridge"), command, config, container_id="pod-1",
                      netns=pod.path, ifname="eth0", cni_path=cni_path,
                      prefix=["ip", "netns", "exec", host.name])

    status, result, stderr = run("ADD")
    assert status == 0, (result, stderr)
    assert result["ips"] == [{"interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}]
    assert {"dst": "10.244.0.0/16", "gw": "10.244.1.1"} in result["routes"]
    assert [i["name"] for i in result["interfaces"]][::2] == ["cni0", "eth0"]

    # pod side: address and the flannel route through the bridge's address
    addrs = [(a["local"], a["prefixlen"]) for link in ip_json(pod, "addr", "show", "eth0")
             for a in link["addr_info"] if a["family"] == "inet"]
    assert addrs == [("10.244.1.2", 24)]
    routes = {(r["dst"], r.get("gateway")) for r in ip_json(pod, "route", "show")}
    assert ("10.244.0.0/16", "10.244.1.1") in routes
    # host side (our namespace): cni0 owns the gateway address, and the pod reaches it
    bridge_addrs = [a["local"] for link in ip_json(host, "addr", "show", "cni0") for a in link["addr_info"]
                    if a["family"] == "inet"]
    assert bridge_addrs == ["10.244.1.1"]
    pod.run("ping", "-c", "1", "-W", "5", "10.244.1.1")

    store = DiskStore(str(tmp_path / "data"), "fltnet")
    with store.locked():
        assert [(str(r.ip), r.container_id, r.ifname) for r in store.list_all()] == [("10.244.1.2", "pod-1", "eth0")]

    status, out, stderr = run("CHECK", {**conf, "prevResult": result})
    assert status == 0, (out, stderr)

    status, out, stderr = run("DEL")
    assert (status, out) == (0, None), stderr
    assert pod.run("ip", "link", "show", "eth0", check=False).returncode != 0
    with store.locked():
        assert store.list_all() == []
    assert run("DEL")[0] == 0  # DEL again: still success
    # nothing leaked into the machine's own namespace
    assert {link["ifname"] for link in json.loads(sh("ip", "-j", "link").stdout)} == root_links


def test_bridge_reports_ipam_exhaustion_and_leaves_no_veth(world):
    host, pod, tmp_path, cni_path = world
    conf = bridge_conf(tmp_path)
    conf["ipam"]["ranges"] = [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.2", "rangeEnd": "10.244.1.2"}]]
    store = DiskStore(str(tmp_path / "data"), "fltnet")
    with store.locked():
        store.reserve("someone-else", "eth0", ipaddress.ip_address("10.244.1.2"), 0)
    status, out, _ = invoke(os.path.join(cni_path, "bridge"), "ADD", conf, container_id="pod-2",
                            netns=pod.path, ifname="eth0", cni_path=cni_path,
                            prefix=["ip", "netns", "exec", host.name])
    assert status != 0 and out["code"] == 100
    assert "no IP addresses available in range set: 10.244.1.2-10.244.1.2" in out["msg"]
    # the reference bridge leaves its veth for the runtime's DEL, which must clean up
    assert invoke(os.path.join(cni_path, "bridge"), "DEL", conf, container_id="pod-2", netns=pod.path,
                  ifname="eth0", cni_path=cni_path, prefix=["ip", "netns", "exec", host.name]).status == 0
    assert pod.run("ip", "link", "show", "eth0", check=False).returncode != 0
    with store.locked():
        assert [r.container_id for r in store.list_all()] == ["someone-else"]
