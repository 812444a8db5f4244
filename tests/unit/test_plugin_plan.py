"""The plugin's pure parts: config defaults, veth names, gateways, pod routes, the result."""
from __future__ import annotations

import ipaddress

import pytest

from conf.cni import IPConfig, Result, Route, load_model, load_result
from conf.errors import InvalidConfigError
from conf.flannel import parse_subnet_env
from conf.plugin import PluginConf
from cni_plugin.attachment import host_veth_name, random_mac
from cni_plugin.plan import bridge_gateways, build_result, effective_mtu, plan_pod

V4_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = V4_ENV + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"


def _conf(**extra) -> PluginConf:
    return load_model(PluginConf, {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannelette", **extra})


def _ipam(*addresses: str, routes=()) -> Result:
    return Result(ips=[IPConfig(address=a) for a in addresses], routes=[Route(**r) for r in routes])


def test_config_defaults_match_the_architecture():
    conf = _conf()
    assert conf.subnet_file == "/run/flannel/subnet.env"
    assert conf.data_dir == "/var/lib/cni/flannelette"
    assert (conf.bridge, conf.mtu, conf.hairpin_mode, conf.is_default_gateway) == ("cni0", 0, True, True)
    assert conf.daemon_socket == "/run/flannelette/cni.sock"
    assert conf.ipam == {"type": "flannelette-ipam"}


@pytest.mark.parametrize("field, value", [("mtu", -5), ("bridge", "x" * 16), ("hairpinMode", "maybe")])
def test_bad_config_fields_are_named(field, value):
    with pytest.raises(InvalidConfigError) as e:
        _conf(**{field: value})
    assert field in e.value.msg


def test_veth_name_is_stable_short_and_distinct():
    name = host_veth_name("abc123", "eth0")
    assert name == host_veth_name("abc123", "eth0")
    assert name.startswith("veth") and len(name) == 12
    assert name != host_veth_name("abc123", "net1") != host_veth_name("abc124", "eth0")


def test_random_mac_is_local_unicast():
    first = int(random_mac().split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


def test_gateways_are_the_first_address_of_each_subnet():
    env = parse_subnet_env(DUAL_ENV)
    assert bridge_gateways(env) == [ipaddress.ip_interface("10.244.1.1/24"),
                                    ipaddress.ip_interface("fd00:10:244:1::1/64")]
    odd = parse_subnet_env(V4_ENV.replace("10.244.1.1/24", "10.244.1.7/24"))
    assert bridge_gateways(odd) == [ipaddress.ip_interface("10.244.1.1/24")]


def test_mtu_from_config_wins_over_subnet_env():
    env = parse_subnet_env(V4_ENV)
    assert effective_mtu(_conf(), env) == 1450
    assert effective_mtu(_conf(mtu=1400), env) == 1400


def test_pod_plan_routes_gateways_and_dedup():
    env = parse_subnet_env(DUAL_ENV)
    ipam = _ipam("10.244.1.5/24", "fd00:10:244:1::5/64", routes=[{"dst": "10.244.0.0/16"}])
    plan = plan_pod(_conf(), env, ipam)
    assert [str(a) for a in plan.addresses] == ["10.244.1.5/24", "fd00:10:244:1::5/64"]
    assert [(ip.gateway, ip.interface) for ip in plan.ips] == [("10.244.1.1", 2), ("fd00:10:244:1::1", 2)]
    assert [(r.dst, r.gw) for r in plan.routes] == [
        ("10.244.0.0/16", "10.244.1.1"),
        ("fd00:10:244::/56", "fd00:10:244:1::1"),
        ("0.0.0.0/0", "10.244.1.1"),
        ("::/0", "fd00:10:244:1::1"),
    ]


def test_pod_plan_without_default_gateway_and_with_ipam_gateway():
    env = parse_subnet_env(V4_ENV)
    ipam = Result(ips=[IPConfig(address="10.244.1.5/24", gateway="10.244.1.254")],
                  routes=[Route(dst="192.168.0.0/16", gw="10.244.1.253")])
    plan = plan_pod(_conf(isDefaultGateway=False), env, ipam)
    assert plan.ips[0].gateway == "10.244.1.254"
    assert [(r.dst, r.gw) for r in plan.routes] == [("192.168.0.0/16", "10.244.1.253"),
                                                    ("10.244.0.0/16", "10.244.1.254")]


def test_v4_only_ipam_gets_no_v6_routes_even_on_a_dual_stack_node():
    plan = plan_pod(_conf(), parse_subnet_env(DUAL_ENV), _ipam("10.244.1.5/24"))
    assert {ipaddress.ip_network(r.dst).version for r in plan.routes} == {4}


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_renders_for_each_version(version):
    env = parse_subnet_env(V4_ENV)
    conf = _conf(dns={"nameservers": ["10.96.0.10"]})
    ipam = _ipam("10.244.1.5/24")
    result = build_result(conf, plan_pod(conf, env, ipam), ipam, bridge_mac="02:00:00:00:00:01",
                          host_veth="veth0011aabb", host_mac="02:00:00:00:00:02", ifname="eth0",
                          pod_mac="02:00:00:00:00:03", netns="/run/netns/p", mtu=1450).render(version)
    assert [i["name"] for i in result["interfaces"]] == ["cni0", "veth0011aabb", "eth0"]
    assert result["interfaces"][2]["sandbox"] == "/run/netns/p"
    assert ("mtu" in result["interfaces"][2]) == (version == "1.1.0")
    [ip] = result["ips"]
    assert ip["interface"] == 2 and ip["gateway"] == "10.244.1.1"
    assert ip.get("version") == ("4" if version < "1.0.0" else None)
    assert result["dns"] == {"nameservers": ["10.96.0.10"]}
    assert load_result(result).ips[0].address == "10.244.1.5/24"  # readable back as a prevResult
