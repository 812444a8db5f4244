"""Keep this node's lease for as long as the daemon runs.

The LeaseManager (daemon.etcd.leases) knows how to renew, check and take back the key;
the keeper decides when: before the lease expires, at once when the watch saw our key
change, and again after an etcd outage (the lease outlives a short one). A subnet
another node took meanwhile goes to `on_lost`, which takes a new one.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from conf.flannel import Lease
from daemon.etcd.leases import LeaseLostError, LeaseManager
from daemon.etcd.registry import RegistryError
from daemon.metrics import Metrics

log = logging.getLogger("flanneletted")


class LeaseKeeper:
    def __init__(self, leases: LeaseManager, metrics: Metrics, lease_ttl: int,
                 stopping: threading.Event, on_held: Callable[[Lease], None],
                 on_lost: Callable[[LeaseLostError], Lease]):
        self.leases, self.metrics, self.lease_ttl = leases, metrics, lease_ttl
        self.stopping, self.on_held, self.on_lost = stopping, on_held, on_lost
        self._wake = threading.Event()  # stopping, or our key changed in etcd
        self._own_key_touched = False

    def own_key_touched(self) -> None:
        """The watch saw an event on our key: check it now."""
        self._own_key_touched = True
        self._wake.set()

    def wake(self) -> None:
        """Look at `stopping` now."""
        self._wake.set()

    def run(self) -> None:
        """Until `stopping` is set: renew, check or take back the lease, each when it is due."""
        leases = self.leases
        retry_at: Optional[float] = None
        while not self.stopping.is_set():
            delay = leases.renew_delay() if retry_at is None else max(0.0, retry_at - time.time())
            self._wake.wait(delay)
            self._wake.clear()
            if self.stopping.is_set():
                return
            touched, self._own_key_touched = self._own_key_touched, False
            if not touched and retry_at is None and leases.renew_delay() > 0.01:
                continue
            old_id = leases.lease_id
            try:
                if touched:
                    own = leases.ensure_held()
                    if leases.lease_id != old_id:
                        self.metrics.inc("lease_takebacks_total")
                else:
                    own = leases.renew()
                    self.metrics.inc("lease_renewals_total")
                retry_at = None
                self.on_held(own)
            except LeaseLostError as e:
                own = self.on_lost(e)
                retry_at = None
                self.on_held(own)
            except RegistryError as e:
                self._own_key_touched |= touched
                wait = min(60.0, self.lease_ttl / 10)
                log.warning("cannot renew the lease yet, retrying seconds=%.0f error=%s", wait, e)
                self.metrics.inc("errors_total", where="lease")
                retry_at = time.time() + wait
