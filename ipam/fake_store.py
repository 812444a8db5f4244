"""An in-memory `Store` for unit tests of the allocator (same contract as DiskStore)."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from ipam.store import IPAddr, Reservation, ip_sort_key


class FakeStore:
    def __init__(self, held: Optional[dict[IPAddr, tuple[str, str]]] = None):
        self.held: dict[IPAddr, tuple[str, str]] = dict(held or {})
        self.last: dict[int, IPAddr] = {}
        self._lock = threading.Lock()
        self.is_locked = False

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._lock:
            self.is_locked = True
            try:
                yield
            finally:
                self.is_locked = False

    def _require_lock(self) -> None:
        # The allocator must hold the lock for every call, as with the disk store.
        if not self.is_locked:
            raise AssertionError("store used without holding its lock")

    def reserve(self, container_id: str, ifname: str, ip: IPAddr, range_id: int) -> bool:
        self._require_lock()
        if ip in self.held:
            return False
        self.held[ip] = (container_id, ifname)
        self.last[range_id] = ip
        return True

    def last_reserved_ip(self, range_id: int) -> Optional[IPAddr]:
        self._require_lock()
        return self.last.get(range_id)

    def release(self, ip: IPAddr) -> None:
        self._require_lock()
        self.held.pop(ip, None)

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddr]:
        ips = self.get_by_id(container_id, ifname)
        for ip in ips:
            del self.held[ip]
        return ips

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddr]:
        return [r.ip for r in self.list_all() if r.belongs_to(container_id, ifname)]

    def list_all(self) -> list[Reservation]:
        self._require_lock()
        return sorted((Reservation(ip, cid, ifn) for ip, (cid, ifn) in self.held.items()),
                      key=lambda r: ip_sort_key(r.ip))
