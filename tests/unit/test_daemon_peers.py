"""Compact leases (daemon/etcd/peers.py), the status report (daemon/status.py) and the malloc
controls (daemon/memory.py)."""
from __future__ import annotations

import ipaddress

import pytest

from conf.flannel import load_lease, load_network_config
from daemon.etcd.leases import parse_lease, parse_leases
from daemon.memory import limit_arenas, release_free_memory
from daemon.etcd.peers import PeerLease, VxlanInfo, compact
from daemon.dataplane.planner import Topology, lease_key, plan
from daemon.etcd.registry import KeyValue, RegistryUnavailableError
from daemon.status import PREFETCH_WORKERS, ExpiryCache, build_report
from daemon.etcd.watch import KnownLease
from tests.support.fake_registry import FakeRegistry

VALUE = ('{"PublicIP":"192.168.1.%d","PublicIPv6":"fd00::%d","BackendType":"vxlan",'
         '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:%02x"}}')


def kv(third: int, key: str = "") -> KeyValue:
    return KeyValue(key or f"10.244.{third}.0-24&fc00:0:0:{third}::-64",
                    (VALUE % (third, third, third)).encode(), 7, 1)


def test_compact_lease_holds_the_models_values():
    model = load_lease(kv(3).key, kv(3).value, 12.5)
    peer = compact(model)
    assert isinstance(peer, PeerLease)
    assert peer.subnet == ipaddress.ip_network("10.244.3.0/24")
    assert peer.ipv6_subnet == ipaddress.ip_network("fc00:0:0:3::/64")
    assert peer.key == model.key == lease_key(peer)
    assert peer.attrs.public_ip == model.attrs.public_ip
    assert peer.attrs.public_ipv6 == ipaddress.ip_address("fd00::3")
    assert peer.attrs.backend_type == "vxlan" and peer.attrs.backend_data == model.attrs.backend_data
    assert peer.attrs.vxlan == VxlanInfo(1, "aa:bb:cc:dd:ee:03")
    assert peer.expiration == 12.5


def test_compact_leases_compare_by_value():
    a, b = parse_lease(kv(3)), parse_lease(kv(3))
    assert a == b and a is not b
    assert a != parse_lease(kv(4))
    changed = KeyValue(kv(3).key, kv(3).value.replace(b"ee:03", b"ee:99"), 7, 2)
    assert parse_lease(changed) != a
    assert KnownLease(a, 7) == KnownLease(b, 7) != KnownLease(b, 8)


def test_parse_keeps_compact_leases_and_skips_unreadable_ones():
    bad = KeyValue("10.244.9.0-24", b'{"PublicIP": "not an address"}', 7, 1)
    parsed = parse_leases([kv(1), bad, kv(2)])
    assert sorted(parsed) == [kv(1).key, kv(2).key]
    assert all(isinstance(p, PeerLease) for p in parsed.values())
    assert parse_lease(KeyValue("garbage", b"{}", 0, 1)) is None


def test_planner_gives_the_same_objects_for_compact_and_model_leases():
    topo = Topology("vxlan", "eth0", vtep4="flannel.1", vtep6="flannel-v6.1", ipv6=True)
    models = [load_lease(kv(i).key, kv(i).value) for i in (2, 3)]
    peers = [parse_lease(kv(i)) for i in (2, 3)]
    a, b = plan(None, models, topo), plan(None, peers, topo)
    assert (a.neighs, a.fdbs, a.routes) == (b.neighs, b.fdbs, b.routes) and a.size == 6


def test_status_report_from_compact_leases():
    config = load_network_config('{"Network": "10.244.0.0/16"}')
    own = load_lease("10.244.1.0-24", VALUE.split(',"PublicIPv6"')[0] % 1 + ',"BackendType":"vxlan",'
                     '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}', 5000.0)
    known = [KnownLease(parse_lease(KeyValue("10.244.2.0-24", (VALUE % (2, 2, 2)).encode(), 9, 1)), 9),
             KnownLease(compact(own), 8)]

    class Expiry:
        def prefetch(self, lease_ids):
            self.prefetched = sorted(lease_ids)

        def expiry(self, lease_id):
            return 1000.0 + lease_id

        def forget_except(self, live):
            self.live = live

    expiry = Expiry()
    report = build_report(config, own, known, lambda lease: True, expiry, True, True, 5)
    assert [(e["subnet"], e["expires"], e["vtepMAC"]) for e in report["leases"]] == [
        ("10.244.1.0/24", 5000.0, "aa:bb:cc:dd:ee:01"), ("10.244.2.0/24", 1009.0, "aa:bb:cc:dd:ee:02")]
    assert report["leases"][1]["publicIP"] == "192.168.1.2" and expiry.live == {8, 9}
    assert expiry.prefetched == [9]  # ours comes from the lease manager, not from etcd


def test_expiry_prefetch_asks_each_unknown_lease_once_several_at_a_time():
    registry = FakeRegistry(rpc_delay=0.02)
    registry.ttls = {lease_id: 100 for lease_id in range(1, 42)}
    cache = ExpiryCache(registry, clock=lambda: 1000.0)
    cache.expiry(1)
    cache.prefetch([0, 1, *range(2, 42), 5])
    assert sorted(registry.ttl_asked) == list(range(1, 42)) and 1 < registry.most_at_once <= PREFETCH_WORKERS
    assert cache.expiry(30) == 1100.0 and len(registry.ttl_asked) == 41  # cached


def test_expiry_prefetch_stops_at_the_first_etcd_error():
    registry = FakeRegistry(rpc_delay=0.02)
    registry.ttl_unavailable = {3}
    with pytest.raises(RegistryUnavailableError):
        ExpiryCache(registry).prefetch(range(1, 200))
    assert len(registry.ttl_asked) < 199  # the rest were cancelled


def test_status_report_lists_our_own_lease_before_the_watch_echoes_it():
    config = load_network_config('{"Network": "10.244.0.0/16"}')
    own = load_lease("10.244.1.0-24", VALUE.split(',"PublicIPv6"')[0] % 1 + ',"BackendType":"vxlan",'
                     '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}', 5000.0)
    known = [KnownLease(parse_lease(KeyValue("10.244.2.0-24", (VALUE % (2, 2, 2)).encode(), 9, 1)), 9)]
    report = build_report(config, own, known, lambda lease: False, None, True, True, 5)
    assert [(e["subnet"], e["programmed"], e["expires"]) for e in report["leases"]] == [
        ("10.244.1.0/24", True, 5000.0), ("10.244.2.0/24", False, 0)]


def test_malloc_controls_work_on_glibc():
    assert limit_arenas() is True  # this venv runs on Debian's glibc
    blocks = [bytearray(100_000) for _ in range(300)]  # below the mmap threshold: heap pages
    del blocks[::2]
    del blocks
    assert release_free_memory() is True  # malloc_trim handed pages back


def test_a_hostile_lease_is_skipped_logged_and_reported(caplog):
    config = load_network_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    reasons: list[str] = []
    zero = KeyValue("10.244.8.0-24", (VALUE % (8, 8, 8)).replace("192.168.1.8", "0.0.0.0").encode(), 7, 1)
    outside = kv(9, key="10.99.9.0-24")
    parsed = parse_leases([kv(1), zero, outside, kv(2)], config, reasons.append)
    assert sorted(parsed) == [kv(1).key, kv(2).key]
    assert reasons == ["public_ip", "outside_network"]
    lines = [r.getMessage() for r in caplog.records if "ignoring lease" in r.getMessage()]
    assert len(lines) == 2 and "10.244.8.0-24" in lines[0] and "0.0.0.0" in lines[0]
