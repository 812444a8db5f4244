"""Every node's lease, kept current from etcd: list once, then watch from that revision.

The watch resumes from the last revision seen after any break (etcd restarted, network
gone), so no event is missed, with backoff 0.1 s -> 2 s, jittered so a cluster's nodes do
not return in step: a watch is back within about 2 s of etcd's return, however long it was
away. When etcd has compacted that revision away, the watcher lists again and diffs the
new snapshot against what it knew (flannel's LeaseWatcher.Reset). While etcd is
unreachable the known set simply stays as it is, and so does the data plane built from it.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from conf.flannel import NetworkConfig
from daemon.etcd.leases import parse_lease, parse_leases, screen_leases
from daemon.metrics import Metrics
from daemon.etcd.peers import PeerLease
from daemon.etcd.registry import (CompactedError, KeyValue, Registry, RegistryError,
                             RegistryUnavailableError, WatchBatch)

log = logging.getLogger("flanneletted.watch")

BACKOFF_MIN, BACKOFF_MAX = 0.1, 2.0
JITTER = 0.2  # each wait is its delay +- 20 %
_STOP = object()


def backoff_wait(delay: float) -> float:
    return delay * random.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True, slots=True)
class KnownLease:
    lease: PeerLease  # (a conf.flannel.Lease quacks the same, as in unit tests)
    lease_id: int  # 0: a reservation without TTL


class LeaseWatcher:
    """Thread that mirrors `<prefix>/subnets/` into memory and reports changes.

    on_change(): the set of leases changed (called from the watcher thread).
    on_own_key(): our own key was deleted or rewritten by someone (the lease manager checks).
    """

    def __init__(self, registry: Registry, metrics: Metrics, on_change: Callable[[], None],
                 own_key: Callable[[], Optional[str]] = lambda: None,
                 on_own_key: Callable[[], None] = lambda: None, config: Optional[NetworkConfig] = None):
        self.registry, self.metrics = registry, metrics
        self.config = config  # leases outside its Network are rejected
        self.on_change, self.own_key, self.on_own_key = on_change, own_key, on_own_key
        self.revision = 0
        self.connected = False
        self._broken = False  # the watch broke and is not re-established yet
        self._known: dict[str, KnownLease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------ reading

    def leases(self) -> list[KnownLease]:
        with self._lock:
            return list(self._known.values())

    # ------------------------------------------------------------ applying changes

    def load_snapshot(self, revision: int, kvs: list[KeyValue],
                      parsed: Optional[dict[str, PeerLease]] = None) -> bool:
        """Replace the known set by a full listing (already parsed if `parsed` is given);
        True if anything changed."""
        if parsed is None:
            parsed = parse_leases(kvs, self.config, self.count_reject)
        elif self.config is not None:
            parsed = screen_leases(parsed, self.config, self.count_reject)
        fresh = {kv.key: KnownLease(parsed[kv.key], kv.lease_id) for kv in kvs if kv.key in parsed}
        with self._lock:
            changed = fresh != self._known
            own = self.own_key()
            own_changed = own is not None and fresh.get(own) != self._known.get(own)
            self._known, self.revision = fresh, revision
        self._publish(changed, own_changed)
        return changed

    def apply(self, batch: WatchBatch) -> bool:
        """Apply one watch response; True if anything changed."""
        own = self.own_key()
        changed = own_touched = False
        with self._lock:
            for key in batch.deletes:
                if self._known.pop(key, None) is not None:
                    changed = True
                own_touched |= key == own
            for kv in batch.puts:
                known = self._parse(kv)
                own_touched |= kv.key == own
                if known is None:
                    changed |= self._known.pop(kv.key, None) is not None
                elif self._known.get(kv.key) != known:
                    self._known[kv.key] = known
                    changed = True
            self.revision = max(self.revision, batch.revision)
        self._publish(changed, own_touched)
        return changed

    def _parse(self, kv: KeyValue) -> Optional[KnownLease]:
        lease = parse_lease(kv, self.config, self.count_reject)
        return KnownLease(lease, kv.lease_id) if lease is not None else None

    def count_reject(self, reason: str) -> None:
        self.metrics.inc("leases_rejected_total", reason=reason)

    def _publish(self, changed: bool, own_changed: bool) -> None:
        self.metrics.set("leases_known", len(self._known))
        if own_changed:
            self.on_own_key()
        if changed:
            self.on_change()

    # ------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._events.put(_STOP)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        delay = BACKOFF_MIN
        need_list = self.revision == 0
        while not self._stop.is_set():
            try:
                if not need_list and self._broken and self.registry.current_revision() < self.revision:
                    log.warning("etcd went back in time (restored or rebuilt), listing again")
                    need_list = True
                if need_list:
                    self.load_snapshot(*self.registry.list_leases())
                    need_list = False
                self._follow()
                delay = BACKOFF_MIN
            except CompactedError as e:
                log.warning("watch lost history, listing again revision=%d compacted=%d",
                            self.revision, e.compact_revision)
                need_list = True
            except RegistryError as e:
                self._disconnected(e)
                if self._stop.wait(backoff_wait(delay)):
                    return
                delay = min(delay * 2, BACKOFF_MAX)
            except Exception:  # a bug must not kill the watch: log it, count it, go on
                log.exception("lease watch failed")
                self.metrics.inc("errors_total", where="watch")
                if self._stop.wait(backoff_wait(delay)):
                    return
                delay = min(delay * 2, BACKOFF_MAX)

    def _disconnected(self, e: RegistryError) -> None:
        if self.connected:
            log.warning("etcd watch broke, keeping the data plane as it is error=%s", e)
            self._broken = True
        self.connected = False
        self.metrics.set("etcd_connected", 0)
        self.registry.reset()

    def _follow(self) -> None:
        """Watch from revision+1 until the stream breaks (raises) or we are stopped."""
        events: queue.Queue = queue.Queue()
        self._events = events
        cancel = self.registry.watch_leases(self.revision + 1, events.put)
        if not self.connected:
            log.info("watching leases start_revision=%d", self.revision + 1)
            if self._broken:
                self.metrics.inc("etcd_reconnects_total")
                self._broken = False
        self.connected = True
        self.metrics.set("etcd_connected", 1)
        try:
            while not self._stop.is_set():
                try:
                    item = events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if item is _STOP:
                    return
                if item is None:  # the stream ended without saying why
                    raise RegistryUnavailableError("watch stream closed")
                if isinstance(item, BaseException):
                    raise item
                self.apply(item)
        finally:
            cancel()
