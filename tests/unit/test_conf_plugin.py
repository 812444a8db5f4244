"""conf.plugin: the `flannelette` conflist entry and the `flannelette-ipam` config."""
import pytest

from conf.cni import load_model
from conf.errors import CniError
from conf.plugin import IpamConf, PluginConf

BASE = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannelette"}


def error_of(model, raw, where=""):
    with pytest.raises(CniError) as e:
        load_model(model, raw, where)
    return e.value.code, e.value.msg


def test_ipam_defaults():
    conf = load_model(IpamConf, {"type": "flannelette-ipam"}, "ipam")
    assert (conf.subnet_file, conf.data_dir) == ("/run/flannel/subnet.env", "/var/lib/cni/networks")
    assert conf.ranges == [] and conf.routes is None


def test_ipam_ranges_and_routes():
    conf = load_model(IpamConf, {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
                                              "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254"}],
                                            [{"subnet": "fc00::/64"}]],
                                 "routes": [{"dst": "0.0.0.0/0"}], "resolvConf": "/etc/resolv.conf"}, "ipam")
    r = conf.ranges[0][0]
    assert (str(r.range_start), str(r.range_end), str(r.gateway)) == ("10.1.0.10", "10.1.0.20", "10.1.0.254")
    assert str(conf.ranges[1][0].subnet) == "fc00::/64" and conf.routes[0].dst == "0.0.0.0/0"


@pytest.mark.parametrize("ranges,field,needle", [
    ([[{"subnet": "10.1.0.5/24"}]], "ipam.ranges.0.0.subnet", "host bits"),
    ([[{"subnet": "10.1.0.0/31"}]], "ipam.ranges.0.0", "too small"),
    ([[{"subnet": "fc00::/127"}]], "ipam.ranges.0.0", "too small"),
    ([[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]], "ipam.ranges.0.0", "not inside"),
    ([[{"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}]], "ipam.ranges.0.0", "not inside"),
    ([[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.3"}]], "ipam.ranges.0.0", "after"),
    ([[{"subnet": "10.1.0.0/24"}], []], "ipam.ranges", "range set 1 is empty"),
    ([[{"subnet": "banana"}]], "ipam.ranges.0.0.subnet", ""),
    ([[{"subnet": "10.1.0.0/24", "rangestart": "10.1.0.9"}]], "ipam.ranges.0.0.rangestart", ""),
    ("10.1.0.0/24", "ipam.ranges", ""),
])
def test_bad_ranges_are_code_7_naming_the_field(ranges, field, needle):
    code, msg = error_of(IpamConf, {"ranges": ranges}, "ipam")
    assert code == 7 and f"'{field}'" in msg and needle in msg


def test_plugin_defaults():
    conf = load_model(PluginConf, BASE)
    assert (conf.bridge, conf.mtu, conf.hairpin_mode, conf.is_default_gateway) == ("cni0", 0, True, True)
    assert conf.subnet_file == "/run/flannel/subnet.env" and conf.data_dir == "/var/lib/cni/flannelette"
    assert conf.daemon_socket == "/run/flannelette/cni.sock"
    assert conf.ipam == {"type": "flannelette-ipam"}


def test_plugin_ipam_keeps_given_fields_and_type():
    conf = load_model(PluginConf, {**BASE, "ipam": {"dataDir": "/tmp/x"}, "daemonSocket": ""})
    assert conf.ipam == {"type": "flannelette-ipam", "dataDir": "/tmp/x"} and conf.daemon_socket == ""
    conf = load_model(PluginConf, {**BASE, "ipam": {"type": "host-local"}})
    assert conf.ipam["type"] == "host-local"


@pytest.mark.parametrize("extra,field", [
    ({"bridge": "a-name-that-is-too-long"}, "bridge"),
    ({"bridge": "br/0"}, "bridge"),
    ({"mtu": 70000}, "mtu"),
    ({"mtu": -1}, "mtu"),
    ({"mtu": 1}, "mtu"),  # fuzzing: the kernel refused it after cni0 was touched (999)
    ({"mtu": True}, "mtu"),  # fuzzing: pydantic read it as 1
    ({"hairpinMode": "sometimes"}, "hairpinMode"),
    ({"ipam": {"type": 5}}, "ipam"),
])
def test_plugin_errors_name_the_field(extra, field):
    code, msg = error_of(PluginConf, {**BASE, **extra})
    assert code == 7 and f"'{field}'" in msg


# ---------------------------------------------------------------- requested MAC


def _mac(env_args=None, **fields):
    from conf.plugin import requested_mac
    return requested_mac(load_model(PluginConf, {**BASE, **fields}), env_args or {})


def test_requested_mac_precedence_follows_bridge():
    assert _mac() is None
    assert _mac({"MAC": "02:AA:bb:cc:dd:01"}) == "02:aa:bb:cc:dd:01"
    assert _mac({"MAC": "02:aa:bb:cc:dd:01"}, args={"cni": {"mac": "02-aa-bb-cc-dd-02"}}) == "02:aa:bb:cc:dd:02"
    assert _mac({"MAC": "02:aa:bb:cc:dd:01"}, args={"cni": {"mac": "02:aa:bb:cc:dd:02"}},
                runtimeConfig={"mac": "02:aa:bb:cc:dd:03"}) == "02:aa:bb:cc:dd:03"
    assert _mac({"MAC": ""}, runtimeConfig={"mac": ""}) is None


@pytest.mark.parametrize("env_args, fields, field", [
    ({"MAC": "02:aa:bb:cc:dd"}, {}, "CNI_ARGS MAC"),
    ({"MAC": "zz:aa:bb:cc:dd:ee"}, {}, "CNI_ARGS MAC"),
    ({"MAC": "02:aa:bb:cc:dd:ee:ff"}, {}, "CNI_ARGS MAC"),
    ({}, {"args": {"cni": {"mac": "01:00:5e:00:00:01"}}}, "args.cni.mac"),
    ({}, {"args": {"cni": {"mac": 42}}}, "args.cni.mac"),
    ({}, {"runtimeConfig": {"mac": "00:00:00:00:00:00"}}, "runtimeConfig.mac"),
    ({}, {"runtimeConfig": {"mac": "ff:ff:ff:ff:ff:ff"}}, "runtimeConfig.mac"),
    # an invalid value is refused even where a later source would override it
    ({"MAC": "bad"}, {"runtimeConfig": {"mac": "02:aa:bb:cc:dd:03"}}, "CNI_ARGS MAC"),
], ids=["short", "not-hex", "long", "multicast", "not-a-string", "zero", "broadcast", "overridden"])
def test_bad_requested_mac_is_code_7_naming_the_field(env_args, fields, field):
    with pytest.raises(CniError) as e:
        _mac(env_args, **fields)
    assert e.value.code == 7 and f"'{field}'" in e.value.msg
