"""Hostile lease values in a real etcd beside valid peers, read by a real flanneletted.

Each bad value (bad JSON, wrong types, a PublicIP of 0.0.0.0 / broadcast / inside the pod
Network, a subnet outside the Network or covering it, a VtepMAC that is not a unicast
MAC, 1 MiB, a key that does not parse) is ignored with one log line and counted in
flannelette_leases_rejected_total{reason}; the kernel holds only the valid peers'
entries, and the daemon keeps running and programming peers that come later.
"""
from __future__ import annotations

import json

import pytest

from tests.netns.test_daemon_dataplane import entries, expected_for
from tests.support.flanneletted import PREFIX, SUBNETS, underlay, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(180)

# Our node leases in 10.244.1-10 only, so it never picks a subnet a hostile key holds.
ETCD_CONFIG = ('{"Network": "10.244.0.0/16", "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.10.0",'
               ' "Backend": {"Type": "vxlan"}}')


def peer(ip: str, mac: str, **changes) -> bytes:
    value = {"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": mac}}
    value.update(changes)
    return json.dumps(value).encode()


GOOD = peer("10.77.0.50", "aa:bb:cc:00:00:50")
# key -> (value, the reason it is refused)
BEFORE_START = {
    "10.244.51.0-24": (b'{"PublicIP": "10.77.0.51", ', "bad_json"),
    "10.244.52.0-24": (peer("10.77.0.52", "aa:bb:cc:00:00:52", PublicIP=12), "bad_field"),
    "10.244.53.0-24": (peer("0.0.0.0", "aa:bb:cc:00:00:53"), "public_ip"),
    "10.244.54.0-24": (peer("10.244.9.9", "aa:bb:cc:00:00:54"), "public_ip"),
    "10.99.0.0-24": (peer("10.77.0.55", "aa:bb:cc:00:00:55"), "outside_network"),
    "10.0.0.0-8": (peer("10.77.0.56", "aa:bb:cc:00:00:56"), "outside_network"),
    "10.244.57.0-24": (peer("10.77.0.57", "not-a-mac"), "vtep_mac"),
    "10.244.58.0-24": (peer("10.77.0.58", "01:00:5e:00:00:01"), "vtep_mac"),
    "10.244.59.0-24": (peer("10.77.0.59", "00:00:00:00:00:00"), "vtep_mac"),
    "10.244.60.0-24": (peer("10.77.0.60", "aa:bb:cc:00:00:60", Pad="x" * (1 << 20)), "too_large"),
    "not-a-subnet": (peer("10.77.0.61", "aa:bb:cc:00:00:61"), "bad_key"),
}
AFTER_START = {
    "10.244.62.0-24": (peer("255.255.255.255", "aa:bb:cc:00:00:62"), "public_ip"),
    "10.244.63.0-24": (b"\xff\xfe garbage", "bad_json"),
    "10.244.64.0-24": (peer("10.77.0.64", "aa:bb:cc:00:00:64", BackendData={"VNI": "x", "VtepMAC": 5}),
                       "bad_field"),
    "10.244.0.0-16": (peer("10.77.0.65", "aa:bb:cc:00:00:65"), "outside_network"),  # the whole Network
}


def put(underlay, key: str, value: bytes) -> None:
    underlay.etcd.ctl("put", SUBNETS + key, input=value)  # stdin: a 1 MiB value is no argument


def reasons(table) -> dict[str, int]:
    out: dict[str, int] = {}
    for _value, reason in table.values():
        out[reason] = out.get(reason, 0) + 1
    return out


def test_hostile_lease_values_are_ignored_counted_and_never_programmed(underlay):
    put(underlay, "10.244.50.0-24", GOOD)
    for key, (value, _) in BEFORE_START.items():
        put(underlay, key, value)
    node = underlay.node().start()
    node.wait_ready()
    valid = [("10.244.50.0-24", json.loads(GOOD))]
    wait_for("only the valid peer programmed", lambda: entries(node) == expected_for(valid), node=node)
    want = reasons(BEFORE_START)
    wait_for("rejects counted", lambda: all(node.metric("leases_rejected_total", reason=r) == n
                                            for r, n in want.items()), node=node)

    for key, (value, _) in AFTER_START.items():
        put(underlay, key, value)
    later = peer("10.77.0.70", "aa:bb:cc:00:00:70")
    put(underlay, "10.244.70.0-24", later)  # after the hostile ones: still programmed
    valid.append(("10.244.70.0-24", json.loads(later)))
    wait_for("the later valid peer programmed", lambda: entries(node) == expected_for(valid), node=node)
    for r, n in reasons({**BEFORE_START, **AFTER_START}).items():
        wait_for(f"{r} counted {n} times", lambda: node.metric("leases_rejected_total", reason=r) == n, node=node)

    assert node.proc.poll() is None and node.http("/healthz")[0] == 200
    routes = {r["dst"] for r in node.ip_json("route", "show")}
    assert not routes & {"10.0.0.0/8", "10.99.0.0/24", "10.244.0.0/16", "10.244.53.0/24", "10.244.62.0/24"}, routes
    fdb_dsts = {f.get("dst") for f in node.bridge_json("fdb", "show", "dev", "flannel.1")}
    assert fdb_dsts - {None} == {"10.77.0.50", "10.77.0.70"}, fdb_dsts
    log = node.log()
    total = len(BEFORE_START) + len(AFTER_START)
    assert log.count("ignoring lease") == total, log
    assert node.metric("leases_known") == 3  # its own and the two valid peers
