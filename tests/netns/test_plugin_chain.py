"""flannelette as the first plugin of a conflist, followed by portmap, bandwidth and tuning.

The chain is driven the way libcni drives it: ADD in order, each plugin getting the
previous result as prevResult and its capabilities' runtimeConfig; CHECK in order and
DEL in reverse, each with the chain's final result as prevResult.
"""
from __future__ import annotations

import copy
from typing import Optional

import pytest

pytestmark = pytest.mark.timeout(120)

RUNTIME_CONFIG = {
    "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
    "bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000, "egressRate": 1000000, "egressBurst": 100000},
}


def _conflist(cni) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "flt-net",
        "plugins": [
            {k: v for k, v in cni.conf().items() if k not in ("cniVersion", "name")},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
        ],
    }


def _plugin_conf(conflist: dict, plugin: dict, prev: Optional[dict]) -> dict:
    """libcni's buildOneConfig: name and version from the list, runtimeConfig per capability."""
    conf = copy.deepcopy(plugin)
    caps = conf.pop("capabilities", {})
    conf.update(cniVersion=conflist["cniVersion"], name=conflist["name"])
    runtime = {k: v for k, v in RUNTIME_CONFIG.items() if caps.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    if prev is not None:
        conf["prevResult"] = prev
    return conf


# Debian's portmap 1.1.x CHECK looks for the IPv4 rules in ip6tables too and always fails
# (containernetworking/plugins#819, fixed upstream later); its rules are asserted directly.
PORTMAP_CHECK_BUG = "could not check ipv6 dnat"


def _run_chain(cni, command: str, conflist: dict, cid: str, pod, prev: Optional[dict] = None):
    plugins = conflist["plugins"] if command != "DEL" else list(reversed(conflist["plugins"]))
    for plugin in plugins:
        out = cni.run(command, _plugin_conf(conflist, plugin, prev), cid=cid, pod=pod, plugin=plugin["type"])
        if (command, plugin["type"]) == ("CHECK", "portmap") and out.status != 0:
            assert PORTMAP_CHECK_BUG in out.result["msg"], out
            continue
        assert out.status == 0, f"{plugin['type']} {command} failed: {out.result} {out.stderr}"
        if command == "ADD":
            prev = out.result
    return prev


def _nat_rules(cni) -> str:
    return cni.node.out("iptables", "-t", "nat", "-S")


def test_chain_add_check_del(cni):
    cni.write_subnet_env(ipv6_subnet="fd00:10:244:1::1/64", ipv6_network="fd00:10:244::/56")
    pod = cni.pod()
    conflist = _conflist(cni)
    final = _run_chain(cni, "ADD", conflist, "c-chain", pod)

    pod_ip = final["ips"][0]["address"].split("/")[0]
    pod_ip6 = final["ips"][1]["address"].split("/")[0]
    assert [i["name"] for i in final["interfaces"]][:3] == ["cni0", final["interfaces"][1]["name"], "eth0"]
    assert f"{pod_ip}:80" in _nat_rules(cni)  # portmap's DNAT for hostPort 18080
    assert f"[{pod_ip6}]:80" in cni.node.out("ip6tables", "-t", "nat", "-S")
    host = final["interfaces"][1]["name"]
    assert "tbf" in cni.node.out("tc", "qdisc", "show", "dev", host)  # bandwidth's ingress shaping
    assert pod.out("cat", "/proc/sys/net/core/somaxconn").strip() == "512"  # tuning in the pod

    _run_chain(cni, "CHECK", conflist, "c-chain", pod, final)

    pod.run("ip", "route", "del", "default")
    bad = cni.run("CHECK", _plugin_conf(conflist, conflist["plugins"][0], final), cid="c-chain", pod=pod)
    assert bad.result["code"] == 104
    pod.run("ip", "route", "add", "default", "via", "10.244.1.1")

    _run_chain(cni, "DEL", conflist, "c-chain", pod, final)
    assert pod_ip not in _nat_rules(cni)
    links = cni.node_links()
    assert host not in links
    assert not any(link.get("linkinfo", {}).get("info_kind") == "ifb" for link in links.values())
    assert cni.allocations() == {} and cni.state_files() == []
    _run_chain(cni, "DEL", conflist, "c-chain", pod, final)  # the whole chain's DEL is idempotent
