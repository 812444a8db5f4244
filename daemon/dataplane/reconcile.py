"""The level-triggered loop that keeps the kernel in line with etcd.

Any trigger (a batch of etcd events, a netlink event on our device, the periodic tick)
only wakes the loop; each run hands the backend every peer lease and lets it compute
the whole wanted state and apply the difference (against a fresh dump of the kernel,
except on a run for lease changes alone: see Backend.reconcile). Triggers that arrive during a run
coalesce into one more run, so a burst of 5000 lease events costs a handful of runs.
The tick also re-checks the masquerade rules, as flanneld's iptables resync does.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from conf.flannel import Lease
from daemon.memory import release_free_memory
from daemon.metrics import Metrics

log = logging.getLogger("flanneletted.reconcile")

MIN_GAP = 0.05  # seconds between runs, at most (see _run)


class Reconciler:
    """Runs backend.reconcile(own, peers) on a dedicated thread, one run at a time."""

    def __init__(self, backend, own: Callable[[], Optional[Lease]],
                 peers: Callable[[], list[Lease]], metrics: Metrics, interval: float,
                 masquerade=None):
        self.backend, self.own, self.peers = backend, own, peers
        self.metrics, self.interval, self.masquerade = metrics, interval, masquerade
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reasons: set[str] = set()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._own_peer: tuple = (None, None)  # (own lease, the peers' lease object for it)

    def trigger(self, reason: str) -> None:
        with self._lock:
            self._reasons.add(reason)
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        next_tick = time.monotonic() + self.interval
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            if self._stop.is_set():
                return
            self._wake.clear()
            with self._lock:
                reasons, self._reasons = self._reasons, set()
            if not reasons:
                reasons = {"tick"}
                next_tick = time.monotonic() + self.interval
                self._check_masquerade()
            started = time.monotonic()
            self.run_once("+".join(sorted(reasons)))
            release_free_memory()  # a run frees as much as it allocated (daemon.memory)
            if reasons == {"tick"}:
                continue  # a lease change that came during the tick's long run goes next, now
            # rest as long as the run took, MIN_GAP at most: a burst of triggers during a long
            # run coalesces into one more, and a lease change after a short one waits little
            self._stop.wait(min(MIN_GAP, time.monotonic() - started))

    def run_once(self, reason: str = "manual"):
        """One full reconcile; errors are logged and counted, the next trigger retries."""
        own = self.own()
        if own is None:
            return None
        peers = self._others(own, self.peers())
        started = time.monotonic()
        try:
            if reason == "etcd":  # leases changed, nothing else: the backend may skip its dump
                stats = self.backend.reconcile(own, peers, read_kernel=False)
            else:
                stats = self.backend.reconcile(own, peers)
        except Exception:
            self.metrics.inc("errors_total", where="reconcile")
            log.exception("reconcile failed trigger=%s", reason)
            return None
        elapsed = time.monotonic() - started
        self.metrics.inc("reconcile_runs_total", trigger=_trigger_label(reason))
        self.metrics.observe("reconcile_duration_seconds", elapsed)
        self._record(stats)
        changes = _changes(stats)
        level = logging.INFO if changes else logging.DEBUG
        log.log(level, "reconciled trigger=%s peers=%d changes=%d seconds=%.3f",
                reason, len(peers), changes, elapsed)
        return stats

    def _others(self, own: Lease, leases: list[Lease]) -> list[Lease]:
        """`leases` without our own subnet's. The lease object found for it last time is
        looked for by id (a scan in C: comparing 5000 subnets cost a few ms per run); the
        subnets are compared only when it is gone (renewed, replaced)."""
        last_own, mine = self._own_peer
        if last_own is own and mine is not None:
            try:  # `mine` is held here, so no other live object has its id
                k = list(map(id, leases)).index(id(mine))
                return leases[:k] + leases[k + 1:]
            except ValueError:
                pass
        subnet = own.subnet
        for k, lease in enumerate(leases):
            if lease.subnet == subnet:
                self._own_peer = (own, lease)
                return leases[:k] + [p for p in leases[k + 1:] if p.subnet != subnet]
        self._own_peer = (own, None)
        return leases

    def _record(self, stats) -> None:
        """daemon.dataplane.backend.ReconcileStats -> metrics."""
        self.metrics.set("kernel_objects_programmed", max(0, stats.wanted - stats.errors))
        self.metrics.set("refused_peers", stats.refused)
        if _changes(stats):
            self.metrics.inc("kernel_changes_total", _changes(stats))
        if stats.errors:
            self.metrics.inc("errors_total", stats.errors, where="kernel")
        for device in stats.recreated:
            self.metrics.inc("devices_recreated_total", device=device)
            log.warning("recreated vanished device device=%s", device)

    def _check_masquerade(self) -> None:
        if self.masquerade is None:
            return
        try:
            if not self.masquerade.check():
                log.warning("masquerade rules missing, re-installing them")
                self.masquerade.ensure()
                self.metrics.inc("masquerade_repairs_total")
        except Exception:
            self.metrics.inc("errors_total", where="masquerade")
            log.exception("masquerade check failed")


def _changes(stats) -> int:
    return stats.set + stats.removed


def _trigger_label(reason: str) -> str:
    """Keep the label set small: the first trigger name of a coalesced run."""
    return reason.split("+", 1)[0]
