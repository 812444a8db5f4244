"""The reconcile loop (daemon/dataplane/reconcile.py), metrics text, status report and log lines."""
from __future__ import annotations

import io
import logging
import threading

from conf.flannel import load_lease, load_network_config
from daemon.dataplane.backend import ReconcileStats
from daemon.logs import KeyValueFormatter
from daemon.metrics import Metrics
from daemon.dataplane.reconcile import Reconciler
from daemon.status import build_report
from daemon.etcd.watch import KnownLease


def lease(third: int, ip: str = "192.168.1.1", mac: str = "aa:bb:cc:dd:ee:01"):
    value = ('{"PublicIP":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}'
             % (ip, mac))
    return load_lease(f"10.244.{third}.0-24", value)


class FakeBackend:
    def __init__(self, fail_times: int = 0):
        self.calls: list[tuple] = []
        self.fail_times = fail_times
        self.ran = threading.Semaphore(0)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()

    def reconcile(self, own, leases, read_kernel=True):
        self.read_kernel = read_kernel
        self.entered.release()
        self.gate.wait(5)
        self.calls.append((own.key, sorted(x.key for x in leases)))
        self.ran.release()
        if self.fail_times:
            self.fail_times -= 1
            raise OSError("netlink said no")
        return ReconcileStats(wanted=3 * len(leases), unchanged=0, set=3 * len(leases), removed=1,
                              errors=0, refused=0, recreated=["flannel.1"])


def loop(backend, peers, interval=60.0):
    own = lease(1, ip="192.168.1.10")
    return Reconciler(backend, lambda: own, lambda: peers, Metrics(), interval)


def test_a_run_gets_every_peer_but_never_our_own_subnet_and_records_metrics():
    backend = FakeBackend()
    r = loop(backend, [lease(1, ip="192.168.1.10"), lease(2), lease(3)])
    r.run_once("etcd")
    assert backend.calls == [("10.244.1.0-24", ["10.244.2.0-24", "10.244.3.0-24"])]
    m = r.metrics
    assert m.get("reconcile_runs_total", trigger="etcd") == 1
    assert m.get("kernel_objects_programmed") == 6 and m.get("kernel_changes_total") == 7
    assert m.get("devices_recreated_total", device="flannel.1") == 1
    assert m.get("reconcile_duration_seconds_count") == 1


def test_our_own_subnet_stays_out_as_the_peer_set_and_our_lease_object_change():
    backend, peers = FakeBackend(), [lease(2), lease(1, ip="192.168.1.10"), lease(3)]
    r = loop(backend, peers)
    for change in (lambda: None, lambda: peers.append(lease(4)), lambda: peers.pop(0),
                   lambda: peers.__setitem__(0, lease(1, ip="192.168.1.10")),  # ours renewed
                   lambda: peers.remove(next(p for p in peers if p.key == "10.244.1.0-24"))):
        change()
        r.run_once("etcd")
        assert backend.calls[-1][1] == sorted(p.key for p in peers if p.key != "10.244.1.0-24")


def test_triggers_during_a_run_coalesce_into_one_more_run():
    backend = FakeBackend()
    r = loop(backend, [lease(2)])
    r.start()
    try:
        backend.gate.clear()
        r.trigger("etcd")
        assert backend.entered.acquire(timeout=5)  # the first run is under way
        for _ in range(50):
            r.trigger("kernel")
        backend.gate.set()
        assert backend.ran.acquire(timeout=5) and backend.ran.acquire(timeout=5)
        assert not backend.ran.acquire(timeout=0.5)  # no third run: 51 triggers cost at most 2
    finally:
        r.stop()


def test_the_periodic_tick_runs_without_any_trigger():
    backend = FakeBackend()
    r = loop(backend, [lease(2)], interval=0.1)
    r.start()
    try:
        assert backend.ran.acquire(timeout=5) and backend.ran.acquire(timeout=5)
        assert r.metrics.get("reconcile_runs_total", trigger="tick") >= 2
    finally:
        r.stop()


def test_a_failing_run_is_counted_and_logged_and_the_next_trigger_retries(caplog):
    backend = FakeBackend(fail_times=1)
    r = loop(backend, [lease(2)])
    with caplog.at_level(logging.ERROR, logger="flanneletted.reconcile"):
        assert r.run_once("etcd") is None
    assert "netlink said no" in caplog.text
    assert r.metrics.get("errors_total", where="reconcile") == 1
    assert r.run_once("tick") is not None
    assert r.metrics.get("errors_total", where="reconcile") == 1


def test_only_a_run_for_lease_changes_alone_lets_the_backend_skip_reading_the_kernel():
    backend = FakeBackend()
    r = loop(backend, [lease(2)])
    r.run_once("etcd")
    assert backend.read_kernel is False
    for reason in ("etcd+kernel", "tick", "kernel", "lease", "etcd+lease", "manual"):
        r.run_once(reason)
        assert backend.read_kernel is True, reason


def test_metrics_text_is_prometheus_exposition():
    m = Metrics()
    m.inc("reconcile_runs_total", trigger="etcd")
    m.inc("errors_total", where="kernel")
    m.observe("reconcile_duration_seconds", 0.25)
    m.set("leases_known", 3)
    text = m.render()
    assert "# TYPE flannelette_reconcile_runs_total counter" in text
    assert 'flannelette_reconcile_runs_total{trigger="etcd"} 1' in text
    assert "flannelette_reconcile_duration_seconds_sum 0.25" in text
    assert "# TYPE flannelette_reconcile_duration_seconds summary" in text
    assert "flannelette_leases_known 3" in text and text.endswith("\n")


def test_status_report_lists_every_lease_with_our_own_marked_programmed():
    config = load_network_config('{"Network": "10.244.0.0/16"}')
    own = lease(1, ip="192.168.1.10").model_copy(update={"expiration": 5000.0})
    known = [KnownLease(lease(3, ip="192.168.1.3"), 0), KnownLease(own, 7),
             KnownLease(lease(2, ip="192.168.1.2", mac="aa:bb:cc:dd:ee:02"), 0)]
    report = build_report(config, own, known, lambda x: x.subnet.network_address.packed[2] == 2,
                          None, True, True, 42)
    assert [e["subnet"] for e in report["leases"]] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert report["node"]["publicIP"] == "192.168.1.10" and report["node"]["expires"] == 5000.0
    assert [e["programmed"] for e in report["leases"]] == [True, True, False]
    assert report["leases"][1]["vtepMAC"] == "aa:bb:cc:dd:ee:02"
    assert report["network"] == "10.244.0.0/16" and report["etcd"]["revision"] == 42


def test_log_lines_are_one_line_key_value():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(KeyValueFormatter())
    logger = logging.getLogger("flanneletted.test")
    logger.addHandler(handler)
    try:
        logger.warning("lease revoked, taking it back subnet=%s", "10.244.1.0-24")
        try:
            raise ValueError("two\nlines")
        except ValueError:
            logger.exception("reconcile failed trigger=tick")
    finally:
        logger.removeHandler(handler)
    first, second = out.getvalue().splitlines()
    assert 'level=warning logger=test msg="lease revoked, taking it back" subnet=10.244.1.0-24' in first
    assert 'msg="reconcile failed" trigger=tick traceback="Traceback' in second
