"""An in-memory stand-in for daemon.etcd.registry.Registry, for unit tests only.

The same methods with the same return shapes, over flannel's lease keys in a dict. Every
write moves the revision; etcd leases are granted with a TTL and revoked; a key another
node writes first can be planted (`steal_on_create`). Watches are driven by hand: each
`watch_leases` call hands its callback to the test through `streams`. `rpc_delay` makes
`time_to_live` slow, and the registry counts how many of those calls ran at once.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Optional

from daemon.etcd.registry import KeyValue, RegistryUnavailableError


class FakeRegistry:
    def __init__(self, revision: int = 1, leases: tuple[KeyValue, ...] | list[KeyValue] = (),
                 rpc_delay: float = 0.0):
        self.kv: dict[str, tuple[str, int]] = {}  # lease key -> (value, etcd lease id)
        self.revision = revision  # etcd's: every write moves it
        self.load(revision, leases)
        self.ttls: dict[int, int] = {}  # etcd lease id -> seconds left
        self.next_id = 100
        self.revoked: list[int] = []
        self.steal_on_create: dict[str, str] = {}  # key -> value another node writes first
        self.lists = 0
        self.resets = 0
        self.watch_starts: list[int] = []
        self.streams: queue.Queue = queue.Queue()  # one callback per watch_leases call
        self.fail_next_watch: Optional[Exception] = None
        self.rpc_delay = rpc_delay
        self.ttl_asked: list[int] = []
        self.ttl_unavailable: set[int] = set()  # lease ids whose time_to_live finds etcd gone
        self._lock = threading.Lock()
        self._running = 0
        self.most_at_once = 0

    def load(self, revision: int, leases) -> None:
        """Replace every lease key with `leases` as of `revision` (what etcd holds now)."""
        self.revision = revision
        self.kv = {kv.key: (kv.value.decode(), kv.lease_id) for kv in leases}

    def _write(self) -> None:
        self.revision += 1

    # ------------------------------------------------------------ Registry's methods

    def reset(self) -> None:
        self.resets += 1

    def current_revision(self) -> int:
        return self.revision

    def list_leases(self) -> tuple[int, list[KeyValue]]:
        self.lists += 1
        return self.revision, [KeyValue(k, v.encode(), i, 1) for k, (v, i) in self.kv.items()]

    def grant(self, ttl: int) -> int:
        self.next_id += 1
        self.ttls[self.next_id] = ttl
        return self.next_id

    def revoke(self, lease_id: int) -> None:
        self.revoked.append(lease_id)
        self.ttls.pop(lease_id, None)

    def time_to_live(self, lease_id: int) -> int:
        with self._lock:
            self.ttl_asked.append(lease_id)
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
        time.sleep(self.rpc_delay)
        with self._lock:
            self._running -= 1
        if lease_id in self.ttl_unavailable:
            raise RegistryUnavailableError("etcd is gone")
        return self.ttls.get(lease_id, -1)

    def create_lease(self, key: str, value: str, ttl: int, lease_id: int = 0) -> Optional[int]:
        if key in self.steal_on_create:
            self.kv[key] = (self.steal_on_create.pop(key), 1)
            self._write()
        if key in self.kv:
            return None
        self.kv[key] = (value, lease_id or self.grant(ttl))
        self._write()
        return self.kv[key][1]

    def renew_lease(self, key: str, expected: str, value: str, ttl: int, held_by: Optional[int] = None,
                    lease_id: int = 0) -> tuple[Optional[int], Optional[bytes]]:
        current = self.kv.get(key)
        if current is None or current[0] != expected or held_by not in (None, current[1]):
            return None, current[0].encode() if current else None
        self.kv[key] = (value, lease_id or self.grant(ttl))
        self._write()
        return self.kv[key][1], None

    def get_lease(self, key: str) -> Optional[bytes]:
        return self.kv[key][0].encode() if key in self.kv else None

    def get_lease_kv(self, key: str) -> Optional[KeyValue]:
        if key not in self.kv:
            return None
        return KeyValue(key, self.kv[key][0].encode(), self.kv[key][1], 1)

    def delete_lease(self, key: str) -> None:
        if self.kv.pop(key, None) is not None:
            self._write()

    def watch_leases(self, start_revision: int, callback: Callable[[object], None]) -> Callable[[], None]:
        self.watch_starts.append(start_revision)
        if self.fail_next_watch is not None:
            err, self.fail_next_watch = self.fail_next_watch, None
            raise err
        self.streams.put(callback)
        return lambda: None
