"""ADD: the result per CNI version and the kernel state it describes."""
from __future__ import annotations

import ipaddress
import json

import pytest

pytestmark = pytest.mark.timeout(120)

SUBNET = ipaddress.ip_network("10.244.1.0/24")
DNS = {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]}


def _routes(ns, family: str = "-4") -> dict[str, str]:
    out = json.loads(ns.out("ip", family, "-j", "route", "show", "dev", "eth0"))
    return {r["dst"]: r.get("gateway", "") for r in out}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_matches_the_kernel_for_each_version(cni, version):
    pod = cni.pod()
    result = cni.add(pod, "c-result", version=version, dns=DNS)

    assert result["cniVersion"] == version
    bridge, host, podif = result["interfaces"]
    links = cni.node_links()
    assert bridge["name"] == "cni0" and bridge["mac"] == links["cni0"]["address"]
    assert host["name"].startswith("veth") and host["mac"] == links[host["name"]]["address"]
    pod_link = json.loads(pod.out("ip", "-j", "link", "show", "eth0"))[0]
    assert podif == {**podif, "name": "eth0", "sandbox": pod.path, "mac": pod_link["address"]}
    assert ("mtu" in podif) == (version == "1.1.0")

    [ip] = result["ips"]
    assert ip["gateway"] == "10.244.1.1" and ip["interface"] == 2
    assert ipaddress.ip_interface(ip["address"]).network == SUBNET
    assert ("version" in ip) == (version < "1.0.0")
    assert cni.pod_addresses(pod) == {ipaddress.ip_interface(ip["address"])}

    routes = {r["dst"]: r.get("gw") for r in result["routes"]}
    assert routes == {"10.244.0.0/16": "10.244.1.1", "0.0.0.0/0": "10.244.1.1"}
    assert result["dns"] == DNS


def test_pod_and_host_wiring(cni):
    pod = cni.pod()
    result = cni.add(pod, "c-wiring")
    host_name = result["interfaces"][1]["name"]

    links = cni.node_links()
    bridge, host = links["cni0"], links[host_name]
    assert "UP" in bridge["flags"] and bridge["mtu"] == 1450
    bridge_addrs = json.loads(cni.node.out("ip", "-4", "-j", "addr", "show", "cni0"))[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in bridge_addrs] == [("10.244.1.1", 24)]
    assert host["master"] == "cni0" and host["mtu"] == 1450 and "UP" in host["flags"]
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is True

    pod_links = {link["ifname"]: link for link in json.loads(pod.out("ip", "-j", "link", "show"))}
    assert pod_links["eth0"]["mtu"] == 1450 and "UP" in pod_links["eth0"]["flags"]
    assert "UP" in pod_links["lo"]["flags"]
    assert _routes(pod) == {"default": "10.244.1.1", "10.244.0.0/16": "10.244.1.1", "10.244.1.0/24": ""}


def test_pods_reach_the_gateway_and_each_other(cni):
    a, b = cni.pod(), cni.pod()
    ra, rb = cni.add(a, "c-ping-a"), cni.add(b, "c-ping-b")
    ip_a = ra["ips"][0]["address"].split("/")[0]
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert ip_a != ip_b
    a.run("ping", "-c1", "-W2", "10.244.1.1")
    a.run("ping", "-c1", "-W2", ip_b)
    b.run("ping", "-c1", "-W2", ip_a)
    cni.node.run("ping", "-c1", "-W2", ip_a)


def test_hairpin_off_and_no_default_route_when_asked(cni):
    pod = cni.pod()
    result = cni.add(pod, "c-options", hairpinMode=False, isDefaultGateway=False, mtu=1400)
    host = cni.node_links()[result["interfaces"][1]["name"]]
    assert host["linkinfo"]["info_slave_data"]["hairpin"] is False
    assert host["mtu"] == 1400
    assert _routes(pod) == {"10.244.0.0/16": "10.244.1.1", "10.244.1.0/24": ""}
    assert {r["dst"] for r in result["routes"]} == {"10.244.0.0/16"}


def test_dual_stack_pod_gets_both_families(cni):
    cni.write_subnet_env(ipv6_subnet="fd00:10:244:1::1/64", ipv6_network="fd00:10:244::/56")
    a, b = cni.pod(), cni.pod()
    ra = cni.add(a, "c-dual-a", version="1.1.0")
    rb = cni.add(b, "c-dual-b", version="1.1.0")

    v6 = [ip for ip in ra["ips"] if ":" in ip["address"]]
    assert len(ra["ips"]) == 2 and len(v6) == 1
    assert v6[0]["gateway"] == "fd00:10:244:1::1" and v6[0]["interface"] == 2
    assert ipaddress.ip_interface(v6[0]["address"]).network == ipaddress.ip_network("fd00:10:244:1::/64")
    routes = {r["dst"]: r["gw"] for r in ra["routes"]}
    assert routes["::/0"] == "fd00:10:244:1::1" and routes["fd00:10:244::/56"] == "fd00:10:244:1::1"
    assert {a.version for a in cni.pod_addresses(a)} == {4, 6}
    assert _routes(a, "-6")["default"] == "fd00:10:244:1::1"

    peer_v6 = next(ip["address"] for ip in rb["ips"] if ":" in ip["address"]).split("/")[0]
    a.run("ping", "-6", "-c1", "-W3", "fd00:10:244:1::1")  # usable at once: no DAD wait
    a.run("ping", "-6", "-c1", "-W3", peer_v6)


def test_second_network_on_the_same_bridge_name_gets_its_own_state(cni):
    """Two ifnames of one container: two veths, two addresses, two state files."""
    pod = cni.pod()
    r0 = cni.add(pod, "c-multi", ifname="eth0")
    r1 = cni.add(pod, "c-multi", ifname="net1")
    assert r0["interfaces"][1]["name"] != r1["interfaces"][1]["name"]
    assert r0["ips"][0]["address"] != r1["ips"][0]["address"]
    assert cni.state_files() == ["c-multi:eth0.json", "c-multi:net1.json"]
