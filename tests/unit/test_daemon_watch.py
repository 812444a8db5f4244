"""The lease watcher (daemon/etcd/watch.py): snapshot, events, resume, compaction, outages."""
from __future__ import annotations

import threading
import time

from conf.flannel import LeaseAttrs
from daemon.metrics import Metrics
from daemon.etcd.registry import CompactedError, KeyValue, RegistryUnavailableError, WatchBatch
from daemon.etcd.watch import BACKOFF_MAX, JITTER, LeaseWatcher
from tests.support.fake_registry import FakeRegistry


def kv(third: int, ip: str = "192.168.1.1", lease_id: int = 9) -> KeyValue:
    value = LeaseAttrs(PublicIP=ip, BackendType="vxlan",
                       BackendData={"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:01"}).dump_json()
    return KeyValue(f"10.244.{third}.0-24", value.encode(), lease_id, 1)


def started(reg):
    changes = threading.Semaphore(0)
    own_events = threading.Semaphore(0)
    w = LeaseWatcher(reg, Metrics(), on_change=changes.release, own_key=lambda: "10.244.1.0-24",
                     on_own_key=own_events.release)
    w.start()
    return w, changes, own_events


def keys(w):
    return sorted(k.lease.key for k in w.leases())


def test_snapshot_then_events_then_own_key_news():
    reg = FakeRegistry(10, [kv(1), kv(2)])
    w, changes, own = started(reg)
    try:
        send = reg.streams.get(timeout=5)
        assert changes.acquire(timeout=5) and keys(w) == ["10.244.1.0-24", "10.244.2.0-24"]
        assert reg.watch_starts == [11]
        send(WatchBatch(12, puts=[kv(3)]))
        assert changes.acquire(timeout=5) and "10.244.3.0-24" in keys(w)
        send(WatchBatch(13, deletes=["10.244.1.0-24"]))
        assert changes.acquire(timeout=5) and own.acquire(timeout=5)
        assert keys(w) == ["10.244.2.0-24", "10.244.3.0-24"] and w.revision == 13
        assert w.metrics.get("leases_known") == 2
    finally:
        w.stop()


def test_a_renewal_of_an_unchanged_lease_is_not_a_change():
    reg = FakeRegistry(10, [kv(2)])
    w, changes, _ = started(reg)
    try:
        reg.streams.get(timeout=5)
        assert changes.acquire(timeout=5)
        assert w.apply(WatchBatch(11, puts=[kv(2)])) is False
        assert w.apply(WatchBatch(12, puts=[kv(2, lease_id=10)])) is True  # new etcd lease id
    finally:
        w.stop()


def test_a_broken_stream_resumes_from_the_last_revision_and_counts_a_reconnect():
    reg = FakeRegistry(10, [kv(2)])
    w, changes, _ = started(reg)
    try:
        send = reg.streams.get(timeout=5)
        send(WatchBatch(15, puts=[kv(3)]))
        reg.load(15, [kv(2), kv(3)])  # what etcd holds now (current_revision 15)
        send(RegistryUnavailableError("etcd gone"))
        reg.streams.get(timeout=5)
        assert reg.watch_starts == [11, 16] and reg.lists == 1 and reg.resets == 1
        wait = time.monotonic() + 5
        while w.metrics.get("etcd_reconnects_total") != 1 and time.monotonic() < wait:
            time.sleep(0.01)
        assert w.metrics.get("etcd_reconnects_total") == 1
        assert "10.244.3.0-24" in keys(w)  # nothing forgotten while disconnected
    finally:
        w.stop()


def test_compaction_lists_again_and_diffs_the_snapshot():
    reg = FakeRegistry(10, [kv(1), kv(2)])
    w, changes, own = started(reg)
    try:
        send = reg.streams.get(timeout=5)
        assert changes.acquire(timeout=5)
        reg.load(50, [kv(2), kv(4)])  # 1 vanished and 4 appeared while we were away
        send(CompactedError(40))
        reg.streams.get(timeout=5)
        assert keys(w) == ["10.244.2.0-24", "10.244.4.0-24"] and reg.lists == 2
        assert reg.watch_starts[-1] == 51 and own.acquire(timeout=5)  # our key vanished
    finally:
        w.stop()


def test_an_unreadable_lease_value_is_skipped():
    reg = FakeRegistry(10, [kv(1), KeyValue("10.244.9.0-24", b"not json", 1, 1)])
    w, changes, _ = started(reg)
    try:
        reg.streams.get(timeout=5)
        assert changes.acquire(timeout=5) and keys(w) == ["10.244.1.0-24"]
    finally:
        w.stop()


def test_an_etcd_that_went_back_in_time_is_listed_again():
    reg = FakeRegistry(10, [kv(1), kv(2)])
    w, changes, _ = started(reg)
    try:
        send = reg.streams.get(timeout=5)
        assert changes.acquire(timeout=5)
        reg.load(3, [kv(2)])  # restored from an old backup: revision 3 < 10
        send(RegistryUnavailableError("etcd gone"))
        reg.streams.get(timeout=5)
        assert keys(w) == ["10.244.2.0-24"] and reg.lists == 2 and reg.watch_starts[-1] == 4
    finally:
        w.stop()


def test_a_long_outage_never_spaces_watch_retries_beyond_the_backoff_cap():
    """After many failures in a row the watcher still retries every BACKOFF_MAX (+ jitter),
    so a watch is back within about 2 s of etcd's return, not after a growing backoff."""
    reg = FakeRegistry(10, [kv(2)])
    w = LeaseWatcher(reg, Metrics(), on_change=lambda: None)
    waits: list[float] = []
    outage = {"left": 12}

    def watch_leases(start, callback):
        if outage["left"]:
            outage["left"] -= 1
            raise RegistryUnavailableError("connection refused")
        reg.streams.put(callback)
        return lambda: None

    def wait(seconds):  # the watcher's sleeps, recorded instead of slept
        waits.append(seconds)
        return False

    reg.watch_leases = watch_leases
    w._stop.wait = wait
    w.start()
    try:
        reg.streams.get(timeout=5)
        assert len(waits) == 12
        assert max(waits) <= BACKOFF_MAX * (1 + JITTER) and max(waits) > 1.0
        assert len({round(x, 6) for x in waits[-4:]}) > 1  # jittered, not in step
    finally:
        w.stop()


def test_hostile_lease_values_are_counted_by_reason_and_never_known():
    from conf.flannel import load_network_config
    metrics = Metrics()
    w = LeaseWatcher(FakeRegistry(10, []), metrics, on_change=lambda: None,
                     config=load_network_config('{"Network": "10.244.0.0/16"}'))
    w.load_snapshot(10, [kv(1), KeyValue("10.244.9.0-24", b"x" * (1 << 20), 1, 1)])
    w.apply(WatchBatch(11, puts=[kv(2, ip="10.244.0.7"), KeyValue("10.0.0.0-8", kv(3).value, 1, 1), kv(4)]))
    assert keys(w) == ["10.244.1.0-24", "10.244.4.0-24"]
    assert {r: metrics.get("leases_rejected_total", reason=r) for r in ("too_large", "public_ip", "outside_network")} \
        == {"too_large": 1, "public_ip": 1, "outside_network": 1}
    assert 'flannelette_leases_rejected_total{reason="too_large"} 1' in metrics.render()


def test_a_listing_parsed_at_acquisition_is_screened_against_the_network():
    from conf.flannel import load_network_config
    from daemon.etcd.leases import parse_leases
    metrics = Metrics()
    w = LeaseWatcher(FakeRegistry(10, []), metrics, on_change=lambda: None,
                     config=load_network_config('{"Network": "10.244.0.0/16"}'))
    kvs = [kv(1), KeyValue("10.99.0.0-24", kv(3).value, 1, 1)]
    w.load_snapshot(10, kvs, parse_leases(kvs))  # acquisition parses without the config
    assert keys(w) == ["10.244.1.0-24"] and metrics.get("leases_rejected_total", reason="outside_network") == 1
