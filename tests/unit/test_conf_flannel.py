"""conf.flannel: net-conf defaults and validation, lease keys/values, subnet.env."""
import ipaddress
import json
import os
import stat

import pytest

from conf.errors import CniError
from conf.flannel import (
    LeaseAttrs,
    SubnetEnv,
    load_lease,
    load_network_config,
    load_subnet_env,
    make_subnet_key,
    parse_subnet_env,
    parse_subnet_key,
    write_atomic,
    write_subnet_env,
)

v4net, v6net = ipaddress.IPv4Network, ipaddress.IPv6Network


# ---------------------------------------------------------------- network config


def test_flannel_defaults_for_a_16():
    cfg = load_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert cfg.subnet_len == 24
    assert str(cfg.subnet_min) == "10.244.1.0"  # the first subnet is skipped
    assert str(cfg.subnet_max) == "10.244.255.0"
    assert (cfg.backend.type, cfg.backend.vni, cfg.backend.udp_port) == ("vxlan", 1, 8472)
    assert len(cfg.subnets()) == 255 and cfg.subnets()[0] == v4net("10.244.1.0/24")


@pytest.mark.parametrize("network,subnet_len", [("10.0.0.0/8", 24), ("10.0.0.0/22", 24),
                                                ("10.0.0.0/23", 25), ("10.0.0.0/28", 30)])
def test_default_subnet_len(network, subnet_len):
    assert load_network_config(json.dumps({"Network": network})).subnet_len == subnet_len


def test_keys_are_case_insensitive_like_go_and_backend_type_is_lowered():
    cfg = load_network_config('{"network": "10.5.0.0/16", "subnetlen": 26, '
                              '"backend": {"type": "HOST-GW", "directrouting": true}}')
    assert cfg.subnet_len == 26 and cfg.backend.type == "host-gw" and cfg.backend.direct_routing


def test_explicit_min_max_and_usable_subnets():
    cfg = load_network_config('{"Network": "10.5.0.0/16", "SubnetMin": "10.5.10.0", "SubnetMax": "10.5.12.0"}')
    assert [str(s) for s in cfg.subnets()] == ["10.5.10.0/24", "10.5.11.0/24", "10.5.12.0/24"]
    assert cfg.subnet_usable(v4net("10.5.11.0/24"))
    assert not cfg.subnet_usable(v4net("10.5.9.0/24")) and not cfg.subnet_usable(v4net("10.5.11.0/25"))


def test_ipv6_defaults():
    cfg = load_network_config('{"EnableIPv6": true, "IPv6Network": "fc00::/48", "Network": "10.5.0.0/16"}')
    assert cfg.ipv6_subnet_len == 64 and str(cfg.ipv6_subnet_min) == "fc00:0:0:1::"


@pytest.mark.parametrize("raw,needle", [
    ('{"Network": "10.0.0.0/29"}', "too small"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 31}', "SubnetLen"),
    ('{"Network": "10.0.0.0/16", "SubnetLen": 17}', "SubnetLen"),
    ('{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}', "SubnetMin"),
    ('{"Network": "10.0.0.0/16", "SubnetMax": "10.0.5.7"}', "aligned"),
    ('{"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.5.0"}', "above"),
    ('{"Backend": {"Type": "vxlan"}}', "Network is required"),
    ('{"Network": "10.0.0.0/16", "EnableIPv6": true}', "IPv6Network is required"),
    ('{"Network": "10.0.0.0/16", "EnableIPv4": false}', "at least one"),
    ('{"Network": "10.0.0.0/33"}', "Network"),
    ('{"Network": "10.0.0.0/16", "Backend": {"VNI": -1}}', "VNI"),
    ('{"Network": "10.0.0.0/16", "Backend": {"Port": 70000}}', "Port"),
    ('["Network"]', "JSON object"),
    ('{"Network": ', "not valid JSON"),
])
def test_network_config_validation_is_code_7_with_reason(raw, needle):
    with pytest.raises(CniError) as e:
        load_network_config(raw)
    assert e.value.code == 7 and needle in e.value.msg


# ---------------------------------------------------------------- lease keys and values


@pytest.mark.parametrize("v4,v6,key", [
    ("10.244.1.0/24", None, "10.244.1.0-24"),
    ("10.244.1.0/24", "fc00::/64", "10.244.1.0-24&fc00::-64"),
    ("192.168.0.128/25", "fc00:0:0:5::/64", "192.168.0.128-25&fc00:0:0:5::-64"),
])
def test_subnet_key_round_trip(v4, v6, key):
    v4, v6 = v4net(v4), v6net(v6) if v6 else None
    assert make_subnet_key(v4, v6) == key
    assert parse_subnet_key(key) == (v4, v6)
    assert parse_subnet_key("/coreos.com/network/subnets/" + key) == (v4, v6)


@pytest.mark.parametrize("key", ["10.244.1.0/24", "10.244.1.0-", "config", "10.244.1.0-24&FC00::-64"])
def test_bad_subnet_key(key):
    with pytest.raises(ValueError):
        parse_subnet_key(key)


FLANNEL_LEASE = ('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
                 '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')


def test_lease_value_is_byte_compatible_with_flannel():
    attrs = LeaseAttrs.model_validate_json(FLANNEL_LEASE)
    assert attrs.dump_json() == FLANNEL_LEASE
    assert (attrs.vxlan.vni, attrs.vxlan.vtep_mac) == (1, "c6:d2:32:6f:8f:44")


def test_host_gw_lease_has_no_backend_data():
    attrs = LeaseAttrs(public_ip="10.0.0.2", backend_type="host-gw")
    assert json.loads(attrs.dump_json()) == {"PublicIP": "10.0.0.2", "PublicIPv6": None, "BackendType": "host-gw"}
    assert attrs.vxlan is None


def test_load_lease_from_key_and_value():
    lease = load_lease("/coreos.com/network/subnets/10.244.3.0-24", FLANNEL_LEASE, expiration=12.5)
    assert lease.subnet == v4net("10.244.3.0/24") and lease.key == "10.244.3.0-24"
    assert str(lease.attrs.public_ip) == "192.168.64.3" and lease.expiration == 12.5


def test_lease_value_without_public_ip_is_rejected():
    with pytest.raises(ValueError):
        LeaseAttrs.model_validate_json('{"BackendType": "vxlan"}')


# ---------------------------------------------------------------- subnet.env

FLANNEL_ENV = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"


def test_parse_flannel_subnet_env_and_render_it_back_identically():
    env = parse_subnet_env(FLANNEL_ENV)
    assert env.networks == [v4net("10.244.0.0/16")]
    assert str(env.subnet) == "10.244.1.1/24" and env.subnet.network == v4net("10.244.1.0/24")
    assert (env.mtu, env.ipmasq) == (1450, True)
    assert env.render() == FLANNEL_ENV


def test_dual_stack_and_lists_round_trip():
    env = SubnetEnv(networks=[v4net("10.244.0.0/16"), v4net("10.99.0.0/16")],
                    subnet=ipaddress.IPv4Interface("10.244.7.1/24"), ipv6_networks=[v6net("fc00::/48")],
                    ipv6_subnet=ipaddress.IPv6Interface("fc00:0:0:7::1/64"), mtu=1400, ipmasq=False)
    text = env.render()
    assert "FLANNEL_NETWORK=10.244.0.0/16,10.99.0.0/16\n" in text and "FLANNEL_IPMASQ=false" in text
    assert parse_subnet_env(text) == env


def test_comments_blank_lines_and_quotes_are_tolerated():
    env = parse_subnet_env('# written by hand\n\nFLANNEL_NETWORK="10.244.0.0/16"\n' + FLANNEL_ENV.split("\n", 1)[1])
    assert env.networks == [v4net("10.244.0.0/16")]


@pytest.mark.parametrize("drop", ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"])
def test_missing_variable_is_code_7_naming_it(drop):
    text = "".join(line + "\n" for line in FLANNEL_ENV.splitlines() if not line.startswith(drop + "="))
    with pytest.raises(CniError) as e:
        parse_subnet_env(text, "/run/flannel/subnet.env")
    assert e.value.code == 7 and drop in e.value.msg and "/run/flannel/subnet.env" in e.value.msg


@pytest.mark.parametrize("old,new,needle", [
    ("FLANNEL_MTU=1450", "FLANNEL_MTU=big", "FLANNEL_MTU"),
    ("FLANNEL_MTU=1450", "FLANNEL_MTU=20", "out of range"),
    ("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=yes", "FLANNEL_IPMASQ"),
    ("FLANNEL_SUBNET=10.244.1.1/24", "FLANNEL_SUBNET=10.9.1.1/24", "not inside"),
    ("FLANNEL_SUBNET=10.244.1.1/24", "FLANNEL_SUBNET=10.244.1.1/99", "10.244.1.1/99"),
    ("FLANNEL_MTU=1450", "this is not an env file", "not KEY=VALUE"),
])
def test_garbled_subnet_env_is_code_7(old, new, needle):
    with pytest.raises(CniError) as e:
        parse_subnet_env(FLANNEL_ENV.replace(old, new))
    assert e.value.code == 7 and needle in e.value.msg


def test_missing_subnet_env_is_try_again(tmp_path):
    with pytest.raises(CniError) as e:
        load_subnet_env(str(tmp_path / "subnet.env"))
    assert e.value.code == 11 and "flanneletted" in e.value.msg


def test_write_subnet_env_is_atomic_and_readable(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    write_subnet_env(str(path), parse_subnet_env(FLANNEL_ENV))
    write_subnet_env(str(path), parse_subnet_env(FLANNEL_ENV.replace("1450", "1400")))
    assert load_subnet_env(str(path)).mtu == 1400
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(path.parent) == ["subnet.env"]  # no temporary file left behind


def test_write_atomic_never_exposes_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def dies(fd):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "fsync", dies)
    with pytest.raises(OSError):
        write_atomic(str(path), b"new content")
    assert path.read_bytes() == b"old"


def test_udp_checksum_is_absent_unless_given():
    base = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    assert load_network_config(json.dumps(base)).backend.udp_checksum is None
    for value in (False, True):
        base["Backend"]["UDPChecksum"] = value
        assert load_network_config(json.dumps(base)).backend.udp_checksum is value
    cfg = load_network_config('{"Network": "10.244.0.0/16", "backend": {"udpchecksum": false}}')
    assert cfg.backend.udp_checksum is False


def test_net_inside_and_last_address_agree_with_ipaddress_and_cache_nothing():
    """net_inside is subnet_of (False across versions) and last_address_int the broadcast
    address, both without leaving cached properties on the subnet."""
    from conf.flannel import last_address_int, net_inside
    outers = [ipaddress.ip_network(n) for n in ("10.244.0.0/16", "0.0.0.0/0", "10.244.1.0/24", "fc00::/48")]
    inners = [ipaddress.ip_network(n) for n in
              ("10.244.1.0/24", "10.245.0.0/24", "10.244.0.0/16", "10.0.0.0/8", "10.244.1.128/25",
               "192.168.0.0/32", "fc00:0:0:1::/64", "fc01::/64", "10.244.255.0/24")]
    for inner in inners:
        before = dict(vars(inner))
        assert last_address_int(inner) == int(ipaddress.ip_network(str(inner)).broadcast_address)
        for outer in outers:
            copy = ipaddress.ip_network(str(inner))  # subnet_of caches on its operands
            want = copy.version == outer.version and copy.subnet_of(ipaddress.ip_network(str(outer)))
            assert net_inside(inner, outer) == want, (inner, outer)
        assert vars(inner) == before
