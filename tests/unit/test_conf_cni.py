"""conf.cni: the runtime env, the network config and results in every version."""
import json

import pytest

from conf.cni import (
    MAX_STDIN,
    SUPPORTED_VERSIONS,
    NetConf,
    Result,
    Route,
    decode_config,
    load_env,
    load_model,
    load_result,
    valid_ifname,
)
from conf.errors import CniError
from pydantic import ValidationError

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/p",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}


def code_of(fn, *args):
    with pytest.raises(CniError) as e:
        fn(*args)
    return e.value.code, e.value.msg


# ---------------------------------------------------------------- env


def test_env_add_is_parsed_whole():
    env = load_env(ADD_ENV)
    assert (env.command, env.container_id, env.netns, env.ifname) == ("ADD", "c0ffee", "/run/netns/p", "eth0")
    assert env.path == ["/opt/cni/bin", "/usr/lib/cni"]
    assert env.args == {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web-0"}


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_env_missing_required_variable_is_code_4_naming_it(command, var):
    env = {**ADD_ENV, "CNI_COMMAND": command}
    del env[var]
    code, msg = code_of(load_env, env)
    assert code == 4 and var in msg


def test_env_del_needs_no_netns_and_gc_needs_no_container():
    assert load_env({k: v for k, v in ADD_ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"}).netns == ""
    assert load_env({"CNI_COMMAND": "GC"}).container_id == ""


@pytest.mark.parametrize("environ,needle", [
    ({}, "CNI_COMMAND"),
    ({"CNI_COMMAND": "FROB"}, "FROB"),
    ({"CNI_COMMAND": "add"}, "add"),
])
def test_env_bad_command_is_code_4(environ, needle):
    code, msg = code_of(load_env, environ)
    assert code == 4 and needle in msg


@pytest.mark.parametrize("cid", ["../../etc", "-leading-dash", "has space", "a/b", ".hidden", "x\n"])
def test_env_bad_container_id_is_refused(cid):
    code, msg = code_of(load_env, {**ADD_ENV, "CNI_CONTAINERID": cid})
    assert code == 4 and "CNI_CONTAINERID" in msg


@pytest.mark.parametrize("cid", ["a", "0", "abc_DEF.1-2", "f" * 64])
def test_env_good_container_ids_pass(cid):
    assert load_env({**ADD_ENV, "CNI_CONTAINERID": cid}).container_id == cid


@pytest.mark.parametrize("ifname", ["e" * 16, ".", "..", "a/b", "a b", "a:b", "é" * 8])
def test_env_bad_ifname_is_refused(ifname):
    code, msg = code_of(load_env, {**ADD_ENV, "CNI_IFNAME": ifname})
    assert code == 4 and "CNI_IFNAME" in msg


@pytest.mark.parametrize("ifname", ["eth0", "e" * 15, "net1.100", "vlan-7_x"])
def test_valid_ifnames(ifname):
    assert valid_ifname(ifname)


def test_env_cni_args_without_equals_is_code_4():
    code, msg = code_of(load_env, {**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;oops"})
    assert code == 4 and "oops" in msg


# ---------------------------------------------------------------- stdin


@pytest.mark.parametrize("stdin,code", [
    (b"{", 6),
    (b"[1, 2]", 6),
    (b'{"name": "n"}', 7),
    (b'{"cniVersion": 1}', 7),
    (b'{"cniVersion": ""}', 7),
    (b'{"cniVersion": "1.0.0", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 6),
    (b'{"cniVersion": "1.0.0", "x": ' + b"[" * 64 + b"]" * 64 + b"}", 6),
    (b"\xff\xfe", 6),
    (b'\xef\xbb\xbf{"cniVersion": "1.0.0", "name": "n"}', 6),  # fuzzing: a BOM was accepted
    ('{"cniVersion": "1.0.0", "name": "n"}'.encode("utf-16"), 6),
    (b'{"cniVersion": "0.2.0", "name": "n"}', 1),
    (b'{"cniVersion": "9.9.9", "name": "n"}', 1),
    (b'{"cniVersion": "1.0.0", "pad": "' + b"x" * MAX_STDIN + b'"}', 6),
])
def test_decode_config_errors(stdin, code):
    assert code_of(decode_config, stdin)[0] == code


def test_missing_cni_version_is_code_7_naming_the_field():
    code, msg = code_of(decode_config, b'{"name": "n", "type": "flannelette"}')
    assert code == 7 and "cniVersion" in msg


def test_nesting_up_to_the_limit_decodes():
    deep = b'{"cniVersion": "1.0.0", "x": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert decode_config(deep)["cniVersion"] == "1.0.0"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_decode_config_accepts_every_supported_version(version):
    assert decode_config(json.dumps({"cniVersion": version, "name": "n"}).encode())["cniVersion"] == version


# ---------------------------------------------------------------- NetConf


def test_netconf_fields_and_defaults():
    nc = load_model(NetConf, {"cniVersion": "1.1.0", "name": "cbr0", "type": "flannelette",
                              "runtimeConfig": {"ips": ["10.1.0.9"]}, "unknownKey": 1})
    assert (nc.name, nc.type, nc.runtime_config) == ("cbr0", "flannelette", {"ips": ["10.1.0.9"]})
    assert nc.prev_result is None and nc.dns.is_empty() and nc.gc_attachments() is None


@pytest.mark.parametrize("raw,field", [
    ({"cniVersion": "1.0.0", "name": "cbr0"}, "'type'"),
    ({"cniVersion": "1.0.0", "name": "../x", "type": "t"}, "'name'"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "t", "dns": {"nameservers": "8.8.8.8"}}, "'dns.nameservers'"),
    ({"cniVersion": "1.1.0", "name": "n", "type": "t",
      "cni.dev/valid-attachments": [{"containerID": "a"}]}, "'cni.dev/valid-attachments.0.ifname'"),
])
def test_netconf_errors_are_code_7_naming_the_field(raw, field):
    code, msg = code_of(load_model, NetConf, raw)
    assert code == 7 and field in msg


def test_gc_attachments_prefers_new_key_and_accepts_old_one():
    base = {"cniVersion": "1.1.0", "name": "n", "type": "t"}
    old = NetConf.model_validate({**base, "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]})
    assert [(a.container_id, a.ifname) for a in old.gc_attachments()] == [("a", "eth0")]
    both = NetConf.model_validate({**base, "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}],
                                   "cni.dev/valid-attachments": []})
    assert both.gc_attachments() == []


# ---------------------------------------------------------------- results

FULL_RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "cni0", "mac": "0a:58:0a:f4:01:01", "mtu": 1450},
                   {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "mtu": 1450, "sandbox": "/run/netns/p",
                    "socketPath": "/run/sock", "pciID": "0000:00:1f.6"}],
    "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 1},
            {"address": "fc00::2/64", "gateway": "fc00::1", "interface": 1}],
    "routes": [{"dst": "10.244.0.0/16", "gw": "10.244.1.1", "mtu": 1400, "advmss": 1360,
                "priority": 5, "table": 100, "scope": 0}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
}


def test_render_1_1_0_keeps_every_field():
    out = load_result(FULL_RESULT).render("1.1.0")
    assert out["interfaces"][1] == FULL_RESULT["interfaces"][1]
    assert out["interfaces"][0] == {**FULL_RESULT["interfaces"][0], "sandbox": ""}
    assert out["ips"] == FULL_RESULT["ips"] and out["routes"] == FULL_RESULT["routes"]
    assert out["dns"] == FULL_RESULT["dns"]


def test_render_1_0_0_drops_1_1_fields_and_has_no_ip_version():
    out = load_result(FULL_RESULT).render("1.0.0")
    assert out["cniVersion"] == "1.0.0"
    assert out["interfaces"][1] == {"name": "eth0", "mac": "0a:58:0a:f4:01:02", "sandbox": "/run/netns/p"}
    assert out["ips"] == FULL_RESULT["ips"]
    assert out["routes"] == [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}]


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_render_0_x_carries_ip_version(version):
    out = load_result(FULL_RESULT).render(version)
    assert out["cniVersion"] == version
    assert [(ip["version"], ip["address"]) for ip in out["ips"]] == [("4", "10.244.1.2/24"), ("6", "fc00::2/64")]
    assert "mtu" not in out["interfaces"][1]


def _without_1_1_fields(result: dict) -> dict:
    out = json.loads(json.dumps(result))
    for i in out["interfaces"]:
        for key in ("mtu", "socketPath", "pciID"):
            i.pop(key, None)
    for r in out["routes"]:
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            r.pop(key, None)
    return out


@pytest.mark.parametrize("src", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("dst", SUPPORTED_VERSIONS)
def test_conversion_between_any_two_versions(src, dst):
    """src -> dst loses exactly the fields src cannot carry, nothing else."""
    once = load_result(load_result(FULL_RESULT).render(src)).render(dst)
    carried = FULL_RESULT if src == "1.1.0" else _without_1_1_fields(FULL_RESULT)
    assert once == load_result(carried).render(dst)
    assert once["cniVersion"] == dst


def test_load_old_result_with_negative_interface_index():
    res = load_result({"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.2/24",
                                                       "interface": -1}]})
    assert res.ips[0].interface is None and "interface" not in res.render("1.0.0")["ips"][0]


@pytest.mark.parametrize("bad", [{"ips": [{"gateway": "10.1.0.1"}]}, {"ips": "x"}, {"interfaces": [{"mac": 1}]}])
def test_load_bad_result_is_code_7(bad):
    assert code_of(load_result, bad)[0] == 7


def test_empty_result_renders_minimal_document():
    assert Result().render("1.0.0") == {"cniVersion": "1.0.0", "ips": [], "dns": {}}
    assert load_result(None) == Result()


# ---------------------------------------------------------------- found by fuzzing (tests/netns/test_hostile_input.py)


def test_env_huge_container_id_is_code_4():
    # 100k characters passed the character rule and failed later on the state file name (999)
    code, msg = code_of(load_env, {**ADD_ENV, "CNI_CONTAINERID": "c" * 100_000})
    assert code == 4 and "CNI_CONTAINERID" in msg


@pytest.mark.parametrize("route", [{"dst": "garbage"}, {"dst": "10.0.0.0/33"}, {"dst": "0.0.0.0/0", "gw": "x"}])
def test_route_with_bad_dst_or_gw_is_refused(route):
    # a bad dst reached the pod's netlink and came back as 999
    with pytest.raises(ValidationError):
        Route.model_validate(route)
