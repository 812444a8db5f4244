"""The daemon's only door to etcd: flannel's key layout over pyetcd (python-etcd3 API).

Keys: `<prefix>/config` (network config JSON) and `<prefix>/subnets/<subnet key>`
(lease JSON attached to an etcd lease). Every pyetcd/grpc exception is turned into
one of ours in `_translate`, so the rest of the daemon never sees grpc.
Several endpoints fail over: a call that finds its endpoint down is retried on the next.
Every request asks for a member that has a raft leader (etcd's `hasleader` metadata, as
clientv3's WithRequireLeader): a member cut off from the quorum answers "no leader" at
once instead of stalling, and cancels our watch, so both move to a member that can serve.
gRPC's reconnect backoff (up to 120 s by default) is capped at 1 s: after all members were
down, a channel must not sit out the members' return.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import grpc
import pyetcd
from pyetcd import exceptions as etcd_exc
from pyetcd import transactions as etcd_txn
from pyetcd.client import EtcdTokenCallCredentials
from pyetcd.etcdrpc import rpc_pb2

from conf.daemon import DaemonSettings

log = logging.getLogger("flanneletted.registry")

RPC_TIMEOUT = 5.0
PROBE_TIMEOUT = 2.0  # the status request that picks an endpoint: a silent host costs 2 s, not 5
ENDPOINT_RETRY = 1.0  # seconds before a failed endpoint is tried again
# Keepalive pings find a dead etcd behind a silent network (etcd allows >= 5 s). Reconnect
# backoff 0.2 s -> 1 s, and channels of their own (no subchannel shared with a closed
# client's, which would carry its backoff over).
GRPC_OPTIONS = [("grpc.keepalive_time_ms", 10000), ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.use_local_subchannel_pool", 1)]
REQUIRE_LEADER = ("hasleader", "true")


class LeaseCompare(etcd_txn.BaseCompare):
    """Compare a key's etcd lease ID (etcd >= 3.3; pyetcd has no helper for it)."""

    def build_compare(self, compare):
        compare.target = rpc_pb2.Compare.LEASE
        compare.lease = int(self.value)


class RegistryError(Exception):
    """An etcd request failed; str() is one line for the log or the user."""


class RegistryUnavailableError(RegistryError):
    """No endpoint answered (down, unreachable, TLS handshake refused, timeout)."""


class RegistryAuthError(RegistryError):
    """etcd refused our identity or our role does not allow the operation."""


class CompactedError(RegistryError):
    def __init__(self, compact_revision: int):
        super().__init__(f"watch revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str  # the last path component: the subnet key, e.g. 10.244.1.0-24
    value: bytes
    lease_id: int
    mod_revision: int


@dataclass
class WatchBatch:
    revision: int
    puts: list[KeyValue] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)


_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_TLS_MARKS = ("TSI_", "handshake", "CERTIFICATE_VERIFY", "SSL_ERROR")
_DOWN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.CANCELLED)


def translate_exception(exc: BaseException) -> RegistryError:
    """Map a pyetcd/grpc exception onto ours; the one seam for etcd errors."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, etcd_exc.RevisionCompactedError):
        return CompactedError(exc.compacted_revision)
    rpc = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    if isinstance(rpc, grpc.RpcError) and hasattr(rpc, "code"):
        code, detail = rpc.code(), (rpc.details() or "").strip()
        text = f"{detail} ({code.name})" if detail else code.name
        if any(mark in detail for mark in _TLS_MARKS):
            return RegistryUnavailableError(
                f"TLS handshake failed, check --etcd-cafile, --etcd-certfile and --etcd-keyfile ({text})")
        if code in _AUTH_CODES or "authentication failed" in detail:
            return RegistryAuthError(text)
        if code in _DOWN_CODES:
            return RegistryUnavailableError(text)
        return RegistryError(text)
    if isinstance(exc, (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                        etcd_exc.NoServerAvailableError, etcd_exc.WatchTimedOut)):
        return RegistryUnavailableError(str(exc) or type(exc).__name__)
    return RegistryError(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _translate() -> Iterator[None]:
    try:
        yield
    except RegistryError:
        raise
    except (grpc.RpcError, etcd_exc.Etcd3Exception, ValueError) as e:
        raise translate_exception(e) from None


def _read(path: str) -> Optional[bytes]:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise RegistryError(f"cannot read {path}: {e.strerror}") from None


class Registry:
    """flannel's etcd layout; thread-safe; rebuilds its connection after failures."""

    def __init__(self, settings: DaemonSettings, timeout: float = RPC_TIMEOUT):
        self.settings = settings
        self.timeout = timeout
        self.prefix = settings.etcd_prefix.rstrip("/")
        self.config_key = self.prefix + "/config"
        self.subnets_prefix = self.prefix + "/subnets/"
        self._lock = threading.Lock()
        self._client: Optional[pyetcd.MultiEndpointEtcd3Client] = None
        self._credentials = None
        if settings.tls:
            self._credentials = grpc.ssl_channel_credentials(
                _read(settings.etcd_cafile), _read(settings.etcd_keyfile),
                _read(settings.etcd_certfile))

    # ------------------------------------------------------------ connection

    def _connect(self) -> pyetcd.MultiEndpointEtcd3Client:
        """A client on the first endpoint that answers (and accepts our password)."""
        errors: list[str] = []
        for first in self.settings.etcd_endpoints:
            ordered = [first] + [e for e in self.settings.etcd_endpoints if e != first]
            eps = [pyetcd.Endpoint(e.host, e.port, secure=self.settings.tls,
                                   creds=self._credentials, time_retry=ENDPOINT_RETRY,
                                   opts=GRPC_OPTIONS) for e in ordered]
            client = pyetcd.MultiEndpointEtcd3Client(eps, timeout=self.timeout, failover=True)
            client._current_endpoint_label = eps[0].netloc  # try in the order given
            try:
                with _translate():
                    self._authenticate(client)
                return client
            except RegistryAuthError:
                client.close()
                raise
            except RegistryError as e:
                client.close()
                several = len(self.settings.etcd_endpoints) > 1
                errors.append(f"{first}: {e}" if several else str(e))
        raise RegistryUnavailableError("; ".join(errors))

    def _authenticate(self, client) -> None:
        s = self.settings
        client.metadata = (REQUIRE_LEADER,)
        if s.etcd_username:
            resp = client.authstub.Authenticate(
                pyetcd.etcdrpc.AuthenticateRequest(name=s.etcd_username, password=s.etcd_password),
                self.timeout)
            client.metadata += (("token", resp.token),)
            if self.settings.tls:  # grpc refuses call credentials on a plaintext channel
                client.call_credentials = grpc.metadata_call_credentials(
                    EtcdTokenCallCredentials(resp.token))
        # One cheap request proves the endpoint answers and its member has a leader.
        client.maintenancestub.Status(pyetcd.etcdrpc.StatusRequest(), PROBE_TIMEOUT,
                                      credentials=client.call_credentials,
                                      metadata=client.metadata)

    def client(self) -> pyetcd.MultiEndpointEtcd3Client:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def reset(self) -> None:
        """Drop the connection; the next call reconnects (and logs in again)."""
        with self._lock:
            old, self._client = self._client, None
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()

    def close(self) -> None:
        self.reset()

    def _call(self, fn: Callable):
        """Run fn(client); on a dead endpoint or a stale token, retry on the next one."""
        attempts = len(self.settings.etcd_endpoints) + 1
        for attempt in range(attempts):
            client = self.client()  # raises once every endpoint was tried: no retry then
            try:
                with _translate():
                    return fn(client)
            except RegistryAuthError as e:
                if "invalid auth token" not in str(e) or attempt:
                    raise
                self.reset()  # etcd restarted and forgot our token: log in again
            except RegistryUnavailableError:
                if attempt == attempts - 1:
                    raise
                if len(self.settings.etcd_endpoints) == 1:
                    self.reset()

    def check(self) -> None:
        """Connect now, unless connected (used at startup to fail fast with a clear line)."""
        self.client()

    # ------------------------------------------------------------ keys

    def get_config(self) -> Optional[bytes]:
        value, _ = self._call(lambda c: c.get(self.config_key))
        return value

    def list_leases(self) -> tuple[int, list[KeyValue]]:
        """Every lease key under the prefix and the revision of that snapshot."""
        resp = self._call(lambda c: c.get_prefix_response(self.subnets_prefix))
        kvs = [self._kv(kv.key, kv.value, kv.lease, kv.mod_revision) for kv in resp.kvs]
        return resp.header.revision, kvs

    def current_revision(self) -> int:
        return self._call(lambda c: c.get_prefix_response(self.subnets_prefix, count_only=True)).header.revision

    def _kv(self, key: bytes, value: bytes, lease_id: int, mod_revision: int) -> KeyValue:
        return KeyValue(key.decode()[len(self.subnets_prefix):], value, lease_id, mod_revision)

    def grant(self, ttl: int) -> int:
        return self._call(lambda c: c.lease(ttl)).id

    def revoke(self, lease_id: int) -> None:
        with contextlib.suppress(RegistryError):
            self._call(lambda c: c.revoke_lease(lease_id))

    def time_to_live(self, lease_id: int) -> int:
        """Seconds left on an etcd lease; -1 when it no longer exists."""
        return self._call(lambda c: c.get_lease_info(lease_id)).TTL

    def create_lease(self, key: str, value: str, ttl: int, lease_id: int = 0) -> Optional[int]:
        """Create key only if absent, on a fresh TTL lease (or `lease_id`, granted by the
        caller); None if someone holds it."""
        lease_id = lease_id or self.grant(ttl)
        full = self.subnets_prefix + key

        def txn(c):
            t = c.transactions
            return c.transaction(compare=[t.version(full) == 0],
                                 success=[t.put(full, value, lease=lease_id)], failure=[])

        ok, _ = self._call(txn)
        if not ok:
            self.revoke(lease_id)
            return None
        return lease_id

    def renew_lease(self, key: str, expected: str, value: str, ttl: int,
                    held_by: Optional[int] = None,
                    lease_id: int = 0) -> tuple[Optional[int], Optional[bytes]]:
        """Re-put our lease on a fresh TTL lease (or `lease_id`) if it still holds `expected`
        and, with `held_by`, is still attached to that etcd lease.

        Returns (new lease id, None) on success, else (None, current value or None if absent):
        flannel's renewal is an unconditional put, which could overwrite a node that took the
        subnet meanwhile, or another daemon with our public IP (same value): the compares
        avoid both.
        """
        lease_id = lease_id or self.grant(ttl)
        full = self.subnets_prefix + key

        def txn(c):
            t = c.transactions
            compare = [t.value(full) == expected]
            if held_by is not None:
                compare.append(LeaseCompare(full) == held_by)
            return c.transaction(compare=compare,
                                 success=[t.put(full, value, lease=lease_id)],
                                 failure=[t.get(full)])

        ok, responses = self._call(txn)
        if ok:
            return lease_id, None
        self.revoke(lease_id)
        current = responses[0][0][0] if responses and responses[0] else None
        return None, current

    def get_lease(self, key: str) -> Optional[bytes]:
        value, _ = self._call(lambda c: c.get(self.subnets_prefix + key))
        return value

    def get_lease_kv(self, key: str) -> Optional[KeyValue]:
        """The key with its etcd lease ID (who put it), or None when absent."""
        value, meta = self._call(lambda c: c.get(self.subnets_prefix + key))
        if value is None or meta is None:
            return None
        return KeyValue(key, value, meta.lease_id, meta.mod_revision)

    def delete_lease(self, key: str) -> None:
        self._call(lambda c: c.delete(self.subnets_prefix + key))

    def watch_leases(self, start_revision: int, callback: Callable[[object], None]) -> Callable[[], None]:
        """Stream lease changes after start_revision to callback(WatchBatch | RegistryError).

        Returns a cancel function. The stream ends with one error callback when it breaks.
        """
        def on_response(resp) -> None:
            if resp is None:  # pyetcd: the stream ended without an error
                callback(RegistryUnavailableError("watch stream closed"))
                return
            if isinstance(resp, BaseException):
                callback(translate_exception(resp))
                return
            batch = WatchBatch(resp.header.revision)
            for ev in resp.events:
                if isinstance(ev, pyetcd.events.DeleteEvent):
                    batch.deletes.append(ev.key.decode()[len(self.subnets_prefix):])
                else:
                    batch.puts.append(self._kv(ev.key, ev.value, ev.lease, ev.mod_revision))
            callback(batch)

        used: dict[str, object] = {}

        def add(c):
            used["client"] = c
            return c.add_watch_prefix_callback(self.subnets_prefix, on_response,
                                               start_revision=start_revision)

        watch_id = self._call(add)

        def cancel() -> None:
            with contextlib.suppress(Exception):
                used["client"].cancel_watch(watch_id)
        return cancel
