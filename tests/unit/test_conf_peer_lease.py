"""conf.peer_lease: malformed or hostile lease values in etcd are rejected with a reason."""
import ipaddress
import json

import pytest

from conf.flannel import load_network_config
from conf.peer_lease import LeaseRejectedError, load_peer_lease

v4net = ipaddress.IPv4Network
NET16 = load_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
GOOD_PEER = {"PublicIP": "192.168.1.2", "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"}}


def _peer(**changes) -> bytes:
    value = dict(GOOD_PEER)
    for k, v in changes.items():
        if v is None:
            value.pop(k, None)
        else:
            value[k] = v
    return json.dumps(value).encode()


def test_a_good_peer_lease_is_accepted():
    lease = load_peer_lease("/coreos.com/network/subnets/10.244.2.0-24", _peer(), NET16)
    assert lease.subnet == v4net("10.244.2.0/24") and str(lease.attrs.public_ip) == "192.168.1.2"


@pytest.mark.parametrize("key,value,reason", [
    ("10.244.2.0-24", b"{not json", "bad_json"),
    ("10.244.2.0-24", b"\xff\xfe\x00", "bad_json"),
    ("10.244.2.0-24", b"[1, 2]", "bad_field"),
    ("10.244.2.0-24", _peer(PublicIP=None), "bad_field"),
    ("10.244.2.0-24", _peer(PublicIP=12), "bad_field"),
    ("10.244.2.0-24", _peer(PublicIP="not an address"), "bad_field"),
    ("10.244.2.0-24", _peer(BackendData=[1]), "bad_field"),
    ("10.244.2.0-24", _peer(BackendType=["vxlan"]), "bad_field"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": "one", "VtepMAC": "aa:bb:cc:dd:ee:02"}), "bad_field"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1 << 24, "VtepMAC": "aa:bb:cc:dd:ee:02"}), "bad_field"),
    ("10.244.2.0-24", _peer(PublicIP="0.0.0.0"), "public_ip"),
    ("10.244.2.0-24", _peer(PublicIP="255.255.255.255"), "public_ip"),
    ("10.244.2.0-24", _peer(PublicIP="224.0.0.1"), "public_ip"),
    ("10.244.2.0-24", _peer(PublicIP="127.0.0.1"), "public_ip"),
    ("10.244.2.0-24", _peer(PublicIP="10.244.7.9"), "public_ip"),  # inside the pod Network
    ("10.244.2.0-24", _peer(PublicIPv6="::"), "public_ip"),
    ("10.245.2.0-24", _peer(), "outside_network"),
    ("10.0.0.0-8", _peer(), "outside_network"),  # would route the whole Network to one peer
    ("10.244.0.0-16", _peer(), "outside_network"),  # the Network itself
    ("10.244.0.0-17", _peer(), "outside_network"),  # half of it
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1, "VtepMAC": "not a mac"}), "vtep_mac"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1, "VtepMAC": 5}), "vtep_mac"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1, "VtepMAC": "00:00:00:00:00:00"}), "vtep_mac"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}), "vtep_mac"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1, "VtepMAC": "ff:ff:ff:ff:ff:ff"}), "vtep_mac"),
    ("10.244.2.0-24", _peer(BackendData={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02\n"}), "vtep_mac"),
    ("10.244.2.0-24", _peer(Pad="x" * (1 << 20)), "too_large"),
    ("10.244.2.0-33", _peer(), "bad_key"),
    ("10.244.2.5-24", _peer(), "bad_key"),  # host bits
    ("999.244.2.0-24", _peer(), "bad_key"),
    ("garbage", _peer(), "bad_key"),
    ("10.244.2.0-24\n", _peer(), "bad_key"),
])
def test_hostile_peer_leases_are_rejected_with_a_reason(key, value, reason):
    with pytest.raises(LeaseRejectedError) as e:
        load_peer_lease(key, value, NET16)
    assert e.value.reason == reason, e.value
