"""The report behind `flannelette status`: this node's lease and every node's lease.

Shape (shared with cni_plugin/status.py, which prints it):
    {"node": <entry> | null, "network": "10.244.0.0/16", "ipv6Network": ... | null,
     "ready": bool, "etcd": {"connected": bool, "revision": int},
     "leases": [<entry>, ...]}          # every node, this one included, sorted by subnet
    entry = {"subnet", "ipv6Subnet", "publicIP", "backend", "vtepMAC",
             "expires" (unix time, 0 = reservation without TTL), "programmed",
             "reachable" (peers, with the health mesh on: true, false, null = not probed yet)}
Expiry times come from etcd's TimeToLive, one request per etcd lease, cached by lease ID
(a renewal creates a new ID), so only new leases cost a request; the unknown ones of a
report are asked PREFETCH_WORKERS at a time (5000 nodes: thousands of round trips).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Optional

from cni_plugin.status import lease_entry
from conf.flannel import Lease, NetworkConfig
from daemon.etcd.registry import Registry, RegistryError
from daemon.etcd.watch import KnownLease

log = logging.getLogger("flanneletted.status")
PREFETCH_WORKERS = 8


class ExpiryCache:
    """lease ID -> expiry (unix time), asked from etcd once per ID."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.time):
        self.registry, self.clock = registry, clock
        self._cache: dict[int, float] = {}
        self._lock = threading.Lock()

    def expiry(self, lease_id: int) -> float:
        if not lease_id:
            return 0.0
        with self._lock:
            if lease_id in self._cache:
                return self._cache[lease_id]
        ttl = self.registry.time_to_live(lease_id)
        expires = self.clock() + ttl if ttl > 0 else self.clock()
        with self._lock:
            self._cache[lease_id] = expires
        return expires

    def prefetch(self, lease_ids: Iterable[int]) -> None:
        """Ask for every ID not cached yet, several at a time; raises the first RegistryError
        (the requests not started by then are dropped)."""
        with self._lock:
            missing = sorted({i for i in lease_ids if i and i not in self._cache})
        if len(missing) < 2:
            return
        pool = ThreadPoolExecutor(min(PREFETCH_WORKERS, len(missing)), thread_name_prefix="lease-ttl")
        try:
            for _ in pool.map(self.expiry, missing):
                pass
        finally:
            pool.shutdown(cancel_futures=True)

    def forget_except(self, live: set[int]) -> None:
        with self._lock:
            for lease_id in set(self._cache) - live:
                del self._cache[lease_id]


def build_report(config: NetworkConfig, own: Optional[Lease], known: list[KnownLease],
                 programmed: Callable[[Lease], bool], expiry: Optional[ExpiryCache],
                 ready: bool, connected: bool, revision: int,
                 reachable: Optional[Callable[[Lease], Optional[bool]]] = None) -> dict:
    """The status report as a JSON-able dict (see the module docstring); with `reachable`
    (the health mesh) every peer's entry says whether its last probe was answered."""
    entries = []
    ask_etcd = expiry is not None and connected
    listed = list(known)
    if own is not None and all(k.lease.subnet != own.subnet for k in known):
        # our own write may not have come back through the watch yet; we hold it regardless
        listed.append(KnownLease(own, 0))
    if ask_etcd:
        try:
            expiry.prefetch(k.lease_id for k in listed if own is None or k.lease.subnet != own.subnet)
        except RegistryError as e:  # etcd went away: report without expiry
            log.info("cannot read lease expiry error=%s", e)
            ask_etcd = False
    for item in sorted(listed, key=lambda k: k.lease.subnet):
        lease = item.lease
        is_own = own is not None and lease.subnet == own.subnet
        entry = lease_entry(lease, True if is_own else _safe(programmed, lease))
        if reachable is not None and not is_own:
            entry["reachable"] = reachable(lease)
        if is_own:
            entry["expires"] = own.expiration
        elif ask_etcd:
            try:
                entry["expires"] = expiry.expiry(item.lease_id)
            except RegistryError as e:  # etcd went away: report the rest without expiry
                log.info("cannot read lease expiry error=%s", e)
                ask_etcd = False
        entries.append(entry)
    if ask_etcd:
        expiry.forget_except({k.lease_id for k in known})
    node = lease_entry(own, True) if own is not None else None
    return {
        "node": node,
        "network": str(config.network) if config.network else None,
        "ipv6Network": str(config.ipv6_network) if config.ipv6_network else None,
        "ready": ready,
        "etcd": {"connected": connected, "revision": revision},
        "leases": entries,
    }


def _safe(programmed: Callable[[Lease], bool], lease: Lease) -> bool:
    try:
        return bool(programmed(lease))
    except Exception:
        log.exception("programmed() failed subnet=%s", lease.subnet)
        return False
