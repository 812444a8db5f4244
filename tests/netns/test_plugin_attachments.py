"""Second and third attachments of one pod (podman `network connect`, Multus): eth0's routes stay.

eth0 and net1 on the network `flt-net` (cni0, 10.244.1.0/24), net2 on `flt-other`
(cni1, 10.245.1.0/24, its own subnet.env). After every ADD and DEL the pod's whole
route table is compared with the routes of the attachments still present.
"""
from __future__ import annotations

import ipaddress
import json
import os

import pytest

pytestmark = pytest.mark.timeout(180)

EXPECTED = {  # (dst, gateway) per interface, as the pod's main table shows them
    "eth0": {("default", "10.244.1.1"), ("10.244.0.0/16", "10.244.1.1"), ("10.244.1.0/24", "")},
    "net1": {("10.244.1.0/24", "")},  # default and cluster routes stay eth0's
    "net2": {("10.245.0.0/16", "10.245.1.1"), ("10.245.1.0/24", "")},  # default stays eth0's
}


def _pod_routes(pod) -> set[tuple[str, str, str]]:
    out = json.loads(pod.out("ip", "-4", "-j", "route", "show", "table", "main"))
    return {(r["dst"], r.get("gateway", ""), r["dev"]) for r in out}


def _expected(ifnames) -> set[tuple[str, str, str]]:
    return {(dst, gw, ifname) for ifname in ifnames for dst, gw in EXPECTED[ifname]}


def _other_network(cni) -> dict:
    """A second flannelette network on its own bridge and subnet.env."""
    subnet_file = os.path.join(cni.root, "run", "other-subnet.env")
    with open(subnet_file, "w") as f:
        f.write("FLANNEL_NETWORK=10.245.0.0/16\nFLANNEL_SUBNET=10.245.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    return {"name": "flt-other", "bridge": "cni1", "subnetFile": subnet_file}


def _attach(cni, pod, cid: str, ifname: str, other: dict) -> dict:
    extra = other if ifname == "net2" else {}
    result = cni.add(pod, cid, ifname=ifname, **extra)
    return result


@pytest.mark.parametrize("del_order", [("net1", "net2", "eth0"), ("eth0", "net2", "net1")],
                         ids=["del-last-first", "del-eth0-first"])
def test_three_attachments_keep_each_others_routes(cni, del_order):
    pod, cid, other = cni.pod(), "c-multi", _other_network(cni)
    results = {}
    present: list[str] = []
    for ifname in ("eth0", "net1", "net2"):
        results[ifname] = _attach(cni, pod, cid, ifname, other)
        present.append(ifname)
        assert _pod_routes(pod) == _expected(present), f"after ADD {ifname}"

    # The results list only the routes each interface really carries.
    reported = {i: {(r["dst"], r.get("gw", "")) for r in res.get("routes", [])} for i, res in results.items()}
    assert reported == {"eth0": {("0.0.0.0/0", "10.244.1.1"), ("10.244.0.0/16", "10.244.1.1")},
                        "net1": set(), "net2": {("10.245.0.0/16", "10.245.1.1")}}
    addresses = [ipaddress.ip_interface(r["ips"][0]["address"]) for r in results.values()]
    assert len(set(addresses)) == 3
    for ifname, result in results.items():
        assert cni.pod_addresses(pod, ifname) == {ipaddress.ip_interface(result["ips"][0]["address"])}
    pod.run("ping", "-c1", "-W2", "10.244.1.1")

    for ifname in del_order:
        extra = other if ifname == "net2" else {}
        out = cni.delete(pod, cid, ifname=ifname, **extra)
        assert out.status == 0, out
        present.remove(ifname)
        assert _pod_routes(pod) == _expected(present), f"after DEL {ifname}"
        for left in present:  # addresses of the others untouched
            assert cni.pod_addresses(pod, left) == {ipaddress.ip_interface(results[left]["ips"][0]["address"])}
        if "eth0" in present:
            pod.run("ping", "-c1", "-W2", "10.244.1.1")
    assert not cni.node_veths()
    assert cni.allocations() == {}


@pytest.mark.parametrize("del_order", [("net1", "eth0"), ("eth0", "net1")], ids=["del-net1-first", "del-eth0-first"])
def test_second_attachment_on_the_same_network(cni, del_order):
    pod, cid = cni.pod(), "c-two"
    first = cni.add(pod, cid)
    second = cni.add(pod, cid, ifname="net1")
    assert _pod_routes(pod) == _expected(["eth0", "net1"])
    assert second.get("routes", []) == []
    assert first["ips"][0]["address"] != second["ips"][0]["address"]
    # CHECK of both attachments passes against their own results.
    for ifname, result in (("eth0", first), ("net1", second)):
        out = cni.run("CHECK", cni.conf(prevResult=result), cid=cid, pod=pod, ifname=ifname)
        assert out.status == 0, out
    present = ["eth0", "net1"]
    for ifname in del_order:
        assert cni.delete(pod, cid, ifname=ifname).status == 0
        present.remove(ifname)
        assert _pod_routes(pod) == _expected(present), f"after DEL {ifname}"
    assert cni.allocations() == {} and cni.state_files() == []
